"""What the engine has to tell the controller: events and direct-task notices waiting for the
work stream, sent in batches (the I/O thread is woken once per batch, not once per event)."""

from __future__ import annotations

import threading
import time

from pxgrpc import wire
from pxgrpc.engine.notices import DirectNotices
from pxgrpc.loopthread import LoopThread, Wakeup

#: The most bytes of events one message up the work stream carries (gRPC refuses messages over
#: 64 MB; a task that prints without pause must not end its engine).
MAX_BATCH_BYTES = 4 * 1024 * 1024


class Outbox:
    """Events for the work stream (from any thread), and the direct tasks to tell about."""

    def __init__(self, io: LoopThread) -> None:
        self._io = io
        self._lock = threading.Lock()
        self._outgoing: list[wire.pb.TaskEvent] = []
        self._release: list[object] = []
        self._wake_pending = False
        # Lanes' direct tasks come and go in the main thread: told of later, without a wake-up.
        self._lane_started: list[str] = []
        self._lane_finished: list[str] = []
        #: The direct tasks to tell the controller of (made in the I/O thread by `start`).
        self.notices: DirectNotices | None = None
        #: Set when there is something to send (made in the I/O thread by `start`).
        self.wakeup: Wakeup | None = None

    def start(self) -> None:
        """(In the I/O thread.)"""
        wakeup = self.wakeup = Wakeup()
        self.notices = DirectNotices(self._io.loop, wakeup.set)

    def __bool__(self) -> bool:
        """Whether there is something to send now (notices not yet due wait for a message)."""
        return bool(self._outgoing) or (self.notices is not None and self.notices.due)

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
        """Tell the controller about direct tasks (in the I/O thread), when due (see `notices`)."""
        assert self.notices is not None
        if started:
            self.notices.started(started)
        if finished:
            self.notices.finished(finished)

    def note_lane(self, started: str = "", finished: str = "") -> None:
        """A task lane's direct task came or finished (main thread): the controller hears of it
        with the next message up the work stream, a heartbeat interval later at the latest; it
        costs the I/O thread no wake-up of its own."""
        with self._lock:
            if started:
                self._lane_started.append(started)
            if finished:
                self._lane_finished.append(finished)

    def lane_notices_waiting(self) -> bool:
        """Whether lanes' notices wait for a message (any thread)."""
        return bool(self._lane_started or self._lane_finished)

    def fold_lane_notices_soon(self) -> None:
        """(Main thread.) A lane's task that ran a while ended: the controller may count the
        engine busy with it (its client announced it), so it hears of the end at once."""
        self._io.call_soon(self._fold_lane_notices)

    def _fold_lane_notices(self) -> None:
        with self._lock:
            started, finished = self._take_lane_notices()
        self._fold(started, finished, news=True)

    def _take_lane_notices(self) -> tuple[list[str], list[str]]:
        """(With the lock held.) The lanes' notices waiting: (started, finished)."""
        taken = self._lane_started, self._lane_finished
        self._lane_started, self._lane_finished = [], []
        return taken

    def _fold(self, started: list[str], finished: list[str], news: bool = False) -> None:
        if self.notices is not None:
            if started:
                self.notices.started(started)
            if finished:
                self.notices.finished(finished, news)

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
            self._fold(*self._take_lane_notices())
            started, finished = self.notices.take() if self.notices is not None else ([], [])
            message = wire.pb.EngineMessage(direct_started=started, direct_finished=finished)
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
