"""What the engine has to tell the controller: events and direct-task notices waiting for the
work stream, sent in batches (the I/O thread is woken once per batch, not once per event)."""

from __future__ import annotations

import asyncio
import threading
import time

from pxgrpc import wire
from pxgrpc.loopthread import LoopThread, Wakeup

#: The most bytes of events one message up the work stream carries (gRPC refuses messages over
#: 64 MB; a task that prints without pause must not end its engine).
MAX_BATCH_BYTES = 4 * 1024 * 1024
#: Seconds after it came that a direct task still queued or running is told of as started (the
#: controller then counts the engine busy with it); a task done sooner is only told of as
#: finished. (The controller knows of it meanwhile from its client's announcement: an interrupt
#: or abort reaches it all the same.)
START_NOTICE_DELAY = 0.1
#: Seconds the controller hears of the end of a direct task it heard of as started, at most.
NOTICE_DELAY = 0.005
#: Seconds a direct task the controller never heard of as started may wait to be told of as
#: finished: such notices ride along with the next message up the work stream (a heartbeat at
#: the latest) instead of costing a message each. Meanwhile only the engine's count of
#: completed tasks lags.
QUIET_NOTICE_DELAY = 0.25


class Outbox:
    """Events for the work stream (from any thread), and the direct tasks to tell about."""

    def __init__(self, io: LoopThread) -> None:
        self._io = io
        self._lock = threading.Lock()
        self._outgoing: list[wire.pb.TaskEvent] = []
        self._release: list[object] = []
        self._wake_pending = False
        # Direct tasks to tell the controller about: (started, finished) task ids; and those it
        # was told of as started and not as finished (their end is news: they count as busy).
        self._direct_started: list[str] = []
        self._direct_finished: list[str] = []
        self._told_started: set[str] = set()
        # When the oldest task waiting to be told of as started came, and when the oldest task
        # waiting to be told of (quietly) as finished finished (loop time).
        self._start_since: float | None = None
        self._quiet_since: float | None = None
        # The timer that wakes the sender for the notices, and when (loop time); whether the
        # notices are due (they go with any message, but only due ones make one).
        self._notice_timer: asyncio.TimerHandle | None = None
        self._notice_due = 0.0
        self._notices_due = False
        #: Set when there is something to send (made in the I/O thread by `start`).
        self.wakeup: Wakeup | None = None

    def start(self) -> None:
        """(In the I/O thread.)"""
        self.wakeup = Wakeup()

    def __bool__(self) -> bool:
        """Whether there is something to send now (notices not yet due wait for a message)."""
        return bool(self._outgoing) or self._notices_due

    def resend(self, events: list[wire.pb.TaskEvent]) -> None:
        """Put events back at the head (results that may have gone down with a lost stream)."""
        with self._lock:
            self._outgoing[:0] = events

    def result_task_ids(self) -> set[str]:
        """The tasks whose result waits here."""
        with self._lock:
            return {e.result.task_id for e in self._outgoing if e.WhichOneof("kind") == "result"}

    def put(self, event: wire.pb.TaskEvent, release: object = None) -> None:
        """Queue an event for the work stream (from any thread)."""
        with self._lock:
            self._outgoing.append(event)
            if release is not None:
                self._release.append(release)
            if self._wake_pending:
                return
            self._wake_pending = True
        if self._io.in_loop():
            self._wake()
        else:
            self._io.call_soon(self._wake)

    def notify_direct(self, started: list[str], finished: list[str]) -> None:
        """Tell the controller about direct tasks (in the I/O thread), a little later: one
        message then covers many short tasks (and none of their round trips waits for it).

        A task still queued or running START_NOTICE_DELAY after it came is told of as started;
        its end is then told within NOTICE_DELAY. A task done sooner is only told of as
        finished, within QUIET_NOTICE_DELAY."""
        now = self._io.loop.time()
        with self._lock:
            self._direct_started.extend(started)
            self._direct_finished.extend(finished)
        if started and self._start_since is None:
            self._start_since = now
        if finished and self._quiet_since is None:
            self._quiet_since = now
        if any(task_id in self._told_started for task_id in finished):
            self._wake_for_notices_at(now + NOTICE_DELAY)
        else:
            self._wake_for_notices_at(self._next_due())

    def _next_due(self) -> float:
        """When the notices waiting here are due, if nothing else sends them sooner."""
        due = float("inf")
        if self._start_since is not None:
            due = self._start_since + START_NOTICE_DELAY
        if self._quiet_since is not None:
            due = min(due, self._quiet_since + QUIET_NOTICE_DELAY)
        return due

    def _wake_for_notices_at(self, due: float) -> None:
        if due == float("inf"):
            return
        if self._notice_timer is not None:
            if self._notice_due <= due:
                return
            self._notice_timer.cancel()
        self._notice_due = due
        self._notice_timer = self._io.loop.call_at(due, self._check_notices)

    def _check_notices(self) -> None:
        """Wake the sender when some notice is due (see `notify_direct`)."""
        self._notice_timer = None
        finished = set(self._direct_finished)
        if not any(key not in finished for key in self._direct_started):
            self._start_since = None  # (they all finished: told of as finished only)
        # (A timer may fire a clock tick early.)
        if not finished.isdisjoint(self._told_started) or self._io.loop.time() >= self._next_due() - 0.001:
            self._notices_due = True
            if self.wakeup is not None:
                self.wakeup.set()
        else:
            self._wake_for_notices_at(self._next_due())

    def _wake(self) -> None:
        with self._lock:
            self._wake_pending = False
        if self.wakeup is not None:
            self.wakeup.set()

    def take(self) -> tuple[wire.pb.EngineMessage, list[object]]:
        """The next message (in the I/O thread): the oldest events, up to MAX_BATCH_BYTES (at
        least one), so that a burst of output never makes a message over gRPC's size limit; and
        every direct task to tell about."""
        with self._lock:
            # (A task that started and finished since the last message is only counted as done.)
            finished = set(self._direct_finished)
            started = [key for key in self._direct_started if key not in finished]
            message = wire.pb.EngineMessage(direct_started=started, direct_finished=self._direct_finished)
            self._direct_started, self._direct_finished = [], []
            self._told_started.difference_update(finished)
            self._told_started.update(started)
            self._start_since = self._quiet_since = None
            self._notices_due = False
            if self._notice_timer is not None:
                self._notice_timer.cancel()
                self._notice_timer = None
            size, count = 0, 0
            for event in self._outgoing:
                size += event.ByteSize()
                if count and size > MAX_BATCH_BYTES:
                    break
                count += 1
            events, self._outgoing = self._outgoing[:count], self._outgoing[count:]
            release: list[object] = []
            if not self._outgoing:
                release, self._release = self._release, []
        message.events.extend(events)
        return message, release


def aborted_event(task_id: str, engine_id: int) -> wire.pb.TaskEvent:
    """The result of a task dropped before it started."""
    event = wire.pb.TaskEvent()
    result = event.result
    result.task_id = task_id
    result.engine_id = engine_id
    result.status = wire.TASK_ABORTED
    result.error.ename = "TaskAborted"
    result.error.evalue = "aborted before it started"
    result.error.traceback.append("TaskAborted: aborted before it started")
    result.completed = time.time()
    return event
