"""The tasks waiting for the engine's main thread, and the one it runs.

The I/O thread queues tasks (`accept`, from the controller's work stream or a client's direct
stream) and may take back one that has not started (`abort`); the main thread takes them in
order (`get`, `claim`). Interrupts reach the running task as a signal to the main thread, so
that the user's code sees KeyboardInterrupt.

While it has nothing to run, the main thread also reads the engine's task lanes (`add_lane`,
see `pxgrpc.engine.lanes`) itself: it waits on the lanes' sockets and on a pipe the I/O thread
writes to when it queues a task, whichever comes first.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
import select
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pxgrpc import wire
from pxgrpc.recentids import RecentIds

if TYPE_CHECKING:
    from pxgrpc.engine.lanes import EngineLane

log = logging.getLogger(__name__)

#: Seconds a task may keep running after the controller is gone before the engine exits anyway.
EXIT_GRACE = 3.0


@dataclass
class WorkItem:
    """A task for the main thread, with the blobs it needs (ready when `blobs` resolves; None
    when the task needs none, or gets them as it runs)."""

    task: wire.pb.Task
    task_id: str
    blobs: concurrent.futures.Future[wire.BlobMap] | None = None


#: What `TaskQueue.get` returns once the engine must stop.
SHUTDOWN = None

#: Starts fetching a task's blobs into the future (called in the I/O thread), given the task
#: (for the shared copies that travel with it) and the ids of the blobs it needs.
FetchBlobs = Callable[[wire.pb.Task, set[str], "concurrent.futures.Future[wire.BlobMap]"], None]

#: How many aborts of tasks not come yet (a lane's, still in its socket) are remembered.
EARLY_ABORTS = 4096


class LaneHandler:
    """What the main thread does with what it reads from a lane (set by the engine's connection)."""

    def tasks(self, lane: EngineLane, tasks: list[wire.pb.Task]) -> bool:
        """Queue the tasks read; False when the lane must close (it was told why)."""
        raise NotImplementedError

    def closed(self, lane: EngineLane) -> None:
        """The lane is closed: its tasks' events go up the work stream from now on."""
        raise NotImplementedError


class TaskQueue:
    """The main thread's tasks: queued ones (an abort can still take them) and the running one."""

    def __init__(self) -> None:
        self._work: collections.deque[WorkItem | None] = collections.deque()
        # Tasks handed to the main thread that it has not started: an abort can still take them.
        self._queued: dict[str, WorkItem] = {}
        self._lock = threading.Lock()
        # The main thread waits in `select` (on the lanes and on `_wake_r`) when `_sleeping`.
        self._sleeping = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        # (epoll where there is one: the lanes are Linux's; else poll, for the wake-up pipe)
        self._poller = select.epoll() if hasattr(select, "epoll") else select.poll()
        self._poller.register(self._wake_r, select.POLLIN)
        self._lanes: dict[int, EngineLane] = {}
        self._new_lanes: list[EngineLane] = []
        # Aborts of direct tasks not come yet (`abort`; see `aborted_early`).
        self._early_aborts = RecentIds(EARLY_ABORTS)
        #: Handles the lanes' tasks (set before the first `add_lane`).
        self.lanes: LaneHandler | None = None
        #: The id of the task the main thread runs, or None.
        self.running: str | None = None
        #: The running task was interrupted because the engine stops (`stop_running`).
        self.stopped = False
        self._main_thread = threading.main_thread().ident

    # --- the I/O thread's side --------------------------------------------------------------

    def accept(self, task: wire.pb.Task, fetch: FetchBlobs | None = None) -> None:
        """Queue a task for the main thread (from any thread), its blobs fetched meanwhile
        (with `fetch`; None: the task gets them when it runs, as a lane's task does)."""
        item = WorkItem(task, task.task_id)
        if fetch is not None:
            refs = wire.blob_ids_of_action(task.action)
            if refs:
                item.blobs = concurrent.futures.Future()
                fetch(task, refs, item.blobs)
        self._hand(self._work, item, item.task_id)

    def add_lane(self, lane: EngineLane) -> None:
        """A task lane for the main thread to read (from any thread)."""
        self._hand(self._new_lanes, lane)

    def _hand(
        self, into: collections.deque[WorkItem | None] | list[EngineLane], item: Any, task_id: str = ""
    ) -> None:
        """Append `item` for the main thread, waking it if it waits in `get` (a task, `task_id`,
        also among the queued ones, where an abort can take it back)."""
        with self._lock:
            if task_id:
                self._queued[task_id] = item
            into.append(item)
            wake, self._sleeping = self._sleeping, False
        if wake:
            os.write(self._wake_w, b"w")

    def abort(self, task_id: str) -> bool:
        """Take back a task that has not started; False when it started (or finished): it goes on.
        A task not come yet (in a lane's socket, behind a running task) is aborted when it comes."""
        with self._lock:
            if self._queued.pop(task_id, None) is not None:
                return True
            if "/" in task_id:  # (a direct task's id)
                self._early_aborts.add(task_id)
            return False

    def aborted_early(self, task_id: str) -> bool:
        """(Main thread.) Whether a task just read from a lane was aborted before it came."""
        if not self._early_aborts:
            return False
        with self._lock:
            return self._early_aborts.take(task_id)

    def idle(self) -> bool:
        """(Main thread, reading a lane.) Whether nothing is queued before what it reads now."""
        return not self._work

    def shutdown(self) -> None:
        """Tell the main thread to stop once it is done with what it runs."""
        self._hand(self._work, SHUTDOWN)

    def held(self) -> set[str]:
        """The queued and running tasks."""
        with self._lock:
            held = set(self._queued)
        if self.running is not None:
            held.add(self.running)
        return held

    def interrupt(self, signal_number: int) -> None:
        """SIGINT raises KeyboardInterrupt in the running task's code (nothing when the engine is
        idle); any other signal goes to the whole process, with its usual effect (SIGTERM and
        SIGKILL end the engine)."""
        if self._main_thread is None:
            return
        if signal_number == signal.SIGINT:
            if self.running is not None:
                signal.pthread_kill(self._main_thread, signal.SIGINT)
            return
        log.warning("task %s: an interrupt sends this engine signal %d", self.running, signal_number)
        try:
            os.kill(os.getpid(), signal_number)
        except (OSError, ValueError) as exc:  # e.g. a number that is no signal on this host
            log.error("could not send signal %d to this engine: %s", signal_number, exc)

    def stop_running(self) -> None:
        """Without a controller nobody can collect results: stop the user's code, then the process."""
        if self.running is None or self._main_thread is None:
            return
        log.warning("lost the controller while task %s runs: interrupting it", self.running)
        self.stopped = True
        signal.pthread_kill(self._main_thread, signal.SIGINT)
        timer = threading.Timer(EXIT_GRACE, os._exit, args=(3,))
        timer.daemon = True
        timer.start()

    # --- the main thread's side -------------------------------------------------------------

    def get(self) -> WorkItem | None:
        """The next task to run (waiting for one, reading the lanes meanwhile), or SHUTDOWN.
        The task is the main thread's from now on: an abort no longer takes it."""
        while True:
            with self._lock:
                while self._work:
                    item = self._work.popleft()
                    if item is None or self._queued.pop(item.task_id, None) is not None:
                        return item
                    # (else it was aborted meanwhile)
                new, self._new_lanes = self._new_lanes, []
                self._sleeping = not new
            for lane in new:
                self._lanes[lane.fileno()] = lane
                self._poller.register(lane.fileno(), select.POLLIN)
                self._read_lane(lane)  # (tasks may have come with its hello)
            if new:
                continue
            ready = self._poller.poll()
            with self._lock:
                self._sleeping = False
            for fd, _ in ready:
                if fd == self._wake_r:
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                else:
                    self._read_lane(self._lanes[fd])

    def _read_lane(self, lane: EngineLane) -> None:
        assert self.lanes is not None
        tasks = lane.read()
        if tasks is None or (tasks and not self.lanes.tasks(lane, tasks)):
            del self._lanes[lane.fileno()]
            self._poller.unregister(lane.fileno())
            self.lanes.closed(lane)
