"""A client's tasks as the controller tracks them.

`TaskRecord` follows one task from its submission until its result reaches the client;
`ClientSession` batches the events of one client's tasks for its stream (a `Session` call, or
one Execute/Apply/... call). The router (`router.TaskRouter`) moves records between sessions
and engines; an engine's record (`registry.EngineRecord`) holds the records it runs.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from dataclasses import dataclass, field

from pxgrpc import wire

log = logging.getLogger(__name__)

_session_numbers = itertools.count(1)

#: The most tasks one session may have in the controller (submitted and not finished, plus
#: results its client has not read yet). Beyond it the controller stops reading the session's
#: stream, so HTTP/2 flow control holds further submissions back in the client: a client that
#: submits without end, or never reads its results, cannot grow the controller's memory (a
#: queued task costs about 1 KB) or slow the other clients.
MAX_SESSION_BACKLOG = 10_000
#: The stream is not read either while this many bytes of events wait for the client (tasks
#: already taken in still deliver their results); output (stdout/stderr/display) beyond it is
#: dropped, and counted, while the client has stopped reading (STALLED_SECONDS).
MAX_UNREAD_BYTES = 32 * 1024 * 1024
#: A client that took no message for this long has stopped reading (see MAX_UNREAD_BYTES).
STALLED_SECONDS = 1.0
#: The most bytes of events one stream message carries.
MAX_MESSAGE_EVENT_BYTES = 1024 * 1024


class ClientSession:
    """The events of one client's tasks, batched for its stream."""

    def __init__(self, name: str = "") -> None:
        self.number = next(_session_numbers)
        self.name = name or f"session-{self.number}"
        #: The client's name for the session (SessionRequest.session_id); empty: none.
        self.client_id = ""
        self.closed = False
        self.input_done = False
        #: The client half-closed its request stream: it will not resume the session.
        self.ended_cleanly = False
        #: Resumed tasks not accounted for yet (see `sessions.SessionBook.settle`).
        self.awaiting: set[str] = set()
        #: Set when the engines changed since the session's last message.
        self.engines_changed = False
        self.tasks: dict[str, TaskRecord] = {}
        self.result_blobs: set[str] = set()
        #: Events not yet taken for the stream, each with its size and whether it is output.
        self._events: collections.deque[tuple[wire.pb.TaskEvent, int, bool]] = collections.deque()
        self._pending_output = 0
        self._unread_bytes = 0
        self._last_read = time.monotonic()
        #: Output events dropped because the client stopped reading (see MAX_UNREAD_BYTES).
        self.dropped_output = 0
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()

    def key(self, task_id: str) -> str:
        """The id engines see for one of this session's tasks (unique in the controller; for a
        named session also across restarts, so that a restarted controller can route results)."""
        return f"{self.client_id}/{task_id}" if self.client_id else f"{self.number}.{task_id}"

    def emit(self, event: wire.pb.TaskEvent) -> None:
        if event.WhichOneof("kind") == "result":
            self.awaiting.discard(event.result.task_id)
        if self.closed:
            return
        output = event.WhichOneof("kind") != "result"
        if output:
            if self._drops_output():
                if not self.dropped_output:
                    log.warning("%s reads no events: dropping its tasks' output", self.name)
                self.dropped_output += 1
                return
            self._pending_output += 1
        size = event.ByteSize()
        if self._unread_bytes > MAX_MESSAGE_EVENT_BYTES:
            # The client lags: a copy, so that the event does not keep the whole engine message
            # it came in (with all the output in it) alive while it waits.
            event = wire.pb.TaskEvent.FromString(event.SerializeToString())
        self._unread_bytes += size
        self._events.append((event, size, output))
        self._wakeup.set()

    def _drops_output(self) -> bool:
        """Whether output is dropped: MAX_UNREAD_BYTES wait and the client read nothing for
        STALLED_SECONDS (or 4 times as much waits): a slow reader still gets all of it."""
        if self._unread_bytes < MAX_UNREAD_BYTES:
            return False
        stalled = time.monotonic() - self._last_read > STALLED_SECONDS
        return stalled or self._unread_bytes >= 4 * MAX_UNREAD_BYTES

    @property
    def backlog(self) -> int:
        """Tasks of the session the controller holds: unfinished, or with unread results."""
        return len(self.tasks) + len(self._events) - self._pending_output

    async def wait_for_room(self) -> None:
        """Return once the session may submit more (under MAX_SESSION_BACKLOG tasks and
        MAX_UNREAD_BYTES of events)."""
        while (
            self.backlog >= MAX_SESSION_BACKLOG or self._unread_bytes >= MAX_UNREAD_BYTES
        ) and not self.closed:
            self._room.clear()
            await self._room.wait()

    def notify_engines(self) -> None:
        """Engines joined or went away: tell the client with the next message."""
        self.engines_changed = True
        self._wakeup.set()

    def finish_input(self) -> None:
        """The client will submit nothing more: end the stream once its tasks are done."""
        self.input_done = True
        self._wakeup.set()

    def take_over(self, other: ClientSession) -> None:
        """Adopt the tasks and undelivered events of an earlier stream of the same session."""
        for task_id, record in other.tasks.items():
            record.session = self
            self.tasks[task_id] = record
        self.result_blobs |= other.result_blobs
        self.awaiting |= other.awaiting
        self._events.extendleft(reversed(other._events))
        self._unread_bytes += other._unread_bytes
        self._pending_output += other._pending_output
        other.tasks, other.result_blobs, other.awaiting = {}, set(), set()
        other._events.clear()
        other._unread_bytes = other._pending_output = 0
        other.closed = other.input_done = True
        other._wakeup.set()  # its stream, if still open, ends
        other._room.set()
        self._wakeup.set()

    def pending_results(self) -> set[str]:
        """Task ids whose result waits in the queue for this session's stream."""
        return {e.result.task_id for e, _, output in self._events if not output}

    def _take_events(self) -> list[wire.pb.TaskEvent]:
        """The oldest events, up to MAX_MESSAGE_EVENT_BYTES (at least one): a stream message
        stays small, so that a client that stops reading holds up the events here, where the
        limits above apply, not in gRPC's write buffers."""
        taken: list[wire.pb.TaskEvent] = []
        size = 0
        self._last_read = time.monotonic()
        while self._events and (not taken or size + self._events[0][1] <= MAX_MESSAGE_EVENT_BYTES):
            event, event_size, output = self._events.popleft()
            taken.append(event)
            size += event_size
            self._unread_bytes -= event_size
            self._pending_output -= output
        return taken

    async def next_events(self) -> list[wire.pb.TaskEvent]:
        """The events since the last call, up to about 1 MB (waits for at least one)."""
        while True:
            message = await self.next_message()
            if message is None:
                return []
            if message[0]:
                return message[0]

    async def next_message(self) -> tuple[list[wire.pb.TaskEvent], bool] | None:
        """What the session's next message carries: the events since the last call (up to about
        1 MB: see `_take_events`) and whether the engines changed. Waits for either; None once
        the input is finished and no task of the session is left."""
        while not (self._events or self.engines_changed):
            if self.input_done and not self.tasks:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        events = self._take_events()
        self._room.set()
        changed, self.engines_changed = self.engines_changed, False
        return events, changed


@dataclass(eq=False)
class TaskRecord:
    """A task from its submission until its result reaches the session."""

    key: str  # unique in the controller; the id engines see
    task_id: str  # the client's id
    session: ClientSession
    action: wire.pb.Action
    encoding: wire.pb.ResultEncoding.ValueType
    load_balanced: bool
    retries: int
    blob_ids: list[str]
    direct_results: bool = False
    submitted: float = field(default_factory=time.time)
    #: Asked back from its engine (an abort) to run elsewhere; requeued when the abort lands.
    stealing: bool = False
    #: The engines that died while running it, and how (a task that kills every engine it
    #: runs on fails naming them all once its retries are spent).
    deaths: list[str] = field(default_factory=list)
    #: Sent straight to its engine, and announced by its client (`SubmitTask.sent_direct`).
    announced: bool = False
    #: Where engines on this host map its blobs that have a shared copy (`Task.shared_blobs`).
    shared_blobs: list[wire.pb.BlobHeader] = field(default_factory=list)

    @classmethod
    def held(cls, key: str, task_id: str, session: ClientSession) -> TaskRecord:
        """A task from before a controller restart, known only by the engine that holds it."""
        return cls(key, task_id, session, wire.pb.Action(), wire.ENCODING_PICKLE, False, 0, [])

    def to_task(self, on_this_host: bool = False) -> wire.pb.Task:
        """The task for its engine (with its blobs' shared copies for an engine on this host)."""
        return wire.pb.Task(
            task_id=self.key,
            action=self.action,
            encoding=self.encoding,
            submitted=self.submitted,
            direct_results=self.direct_results,
            shared_blobs=self.shared_blobs if on_this_host else (),
        )


def failure(
    task_id: str,
    engine_id: int,
    status: wire.pb.TaskStatus.ValueType,
    ename: str,
    evalue: str,
    submitted: float = 0.0,
) -> wire.pb.TaskEvent:
    """A result event for a task that did not run to completion."""
    now = time.time()
    result = wire.pb.TaskResult(
        task_id=task_id,
        engine_id=engine_id,
        status=status,
        error=wire.pb.RemoteException(ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"]),
        submitted=submitted or now,
        completed=now,
    )
    return wire.pb.TaskEvent(result=result)
