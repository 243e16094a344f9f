"""The tasks waiting for the engine's main thread, and the one it runs.

The I/O thread queues tasks (`accept`, from the controller's work stream or a client's direct
stream) and may take back one that has not started (`abort`); the main thread takes them in
order (`get`, `claim`). Interrupts reach the running task as a signal to the main thread, so
that the user's code sees KeyboardInterrupt.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pxgrpc import wire

log = logging.getLogger(__name__)

#: Seconds a task may keep running after the controller is gone before the engine exits anyway.
EXIT_GRACE = 3.0


@dataclass
class WorkItem:
    """A task for the main thread, with the blobs it needs (ready when `blobs` resolves; None
    when the task needs none)."""

    task: wire.pb.Task
    blobs: concurrent.futures.Future[wire.BlobMap] | None = None


#: What `TaskQueue.get` returns once the engine must stop.
SHUTDOWN = None

#: Starts fetching a task's blobs into the future (called in the I/O thread), given the task
#: (for the shared copies that travel with it) and the ids of the blobs it needs.
FetchBlobs = Callable[[wire.pb.Task, set[str], "concurrent.futures.Future[wire.BlobMap]"], None]


class TaskQueue:
    """The main thread's tasks: queued ones (an abort can still take them) and the running one."""

    def __init__(self) -> None:
        self._work: queue.SimpleQueue[WorkItem | None] = queue.SimpleQueue()
        # Tasks handed to the main thread that it has not started: an abort can still take them.
        self._queued: dict[str, WorkItem] = {}
        self._lock = threading.Lock()
        #: The id of the task the main thread runs, or None.
        self.running: str | None = None
        self._main_thread = threading.main_thread().ident

    # --- the I/O thread's side --------------------------------------------------------------

    def accept(self, task: wire.pb.Task, fetch: FetchBlobs) -> None:
        """Queue a task for the main thread, its blobs fetched meanwhile (with `fetch`)."""
        item = WorkItem(task)
        refs = wire.blob_ids_of_action(task.action)
        if refs:
            item.blobs = concurrent.futures.Future()
            fetch(task, refs, item.blobs)
        with self._lock:
            self._queued[task.task_id] = item
        self._work.put(item)

    def abort(self, task_id: str) -> bool:
        """Take back a task that has not started; False when it started (or finished): it goes on."""
        with self._lock:
            return self._queued.pop(task_id, None) is not None

    def shutdown(self) -> None:
        """Tell the main thread to stop once it is done with what it runs."""
        self._work.put(SHUTDOWN)

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
        signal.pthread_kill(self._main_thread, signal.SIGINT)
        timer = threading.Timer(EXIT_GRACE, os._exit, args=(3,))
        timer.daemon = True
        timer.start()

    # --- the main thread's side -------------------------------------------------------------

    def get(self) -> WorkItem | None:
        """The next task (waiting for one), or SHUTDOWN."""
        return self._work.get()

    def claim(self, item: WorkItem) -> bool:
        """The main thread is about to run `item`: False if it was aborted meanwhile."""
        with self._lock:
            return self._queued.pop(item.task.task_id, None) is not None
