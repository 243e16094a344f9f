"""A client's tasks as the controller tracks them.

`TaskRecord` follows one task from its submission until its result reaches the client;
`ClientSession` batches the events of one client's tasks for its stream (a `Session` call, or
one Execute/Apply/... call). The router (`router.TaskRouter`) moves records between sessions
and engines; an engine's record (`registry.EngineRecord`) holds the records it runs.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field

from pxgrpc import wire

_session_numbers = itertools.count(1)


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
        self._events: list[wire.pb.TaskEvent] = []
        self._wakeup = asyncio.Event()

    def key(self, task_id: str) -> str:
        """The id engines see for one of this session's tasks (unique in the controller; for a
        named session also across restarts, so that a restarted controller can route results)."""
        return f"{self.client_id}/{task_id}" if self.client_id else f"{self.number}.{task_id}"

    def emit(self, event: wire.pb.TaskEvent) -> None:
        if event.WhichOneof("kind") == "result":
            self.awaiting.discard(event.result.task_id)
        if not self.closed:
            self._events.append(event)
            self._wakeup.set()

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
        self._events[:0] = other._events
        other.tasks, other.result_blobs, other._events, other.awaiting = {}, set(), [], set()
        other.closed = other.input_done = True
        other._wakeup.set()  # its stream, if still open, ends
        self._wakeup.set()

    def pending_results(self) -> set[str]:
        """Task ids whose result waits in the queue for this session's stream."""
        return {e.result.task_id for e in self._events if e.WhichOneof("kind") == "result"}

    async def next_events(self) -> list[wire.pb.TaskEvent]:
        """Every event since the last call (waits for at least one)."""
        while True:
            message = await self.next_message()
            if message is None:
                return []
            if message[0]:
                return message[0]

    async def next_message(self) -> tuple[list[wire.pb.TaskEvent], bool] | None:
        """What the session's next message carries: every event since the last call and whether
        the engines changed. Waits for either; None once the input is finished and no task of
        the session is left."""
        while not (self._events or self.engines_changed):
            if self.input_done and not self.tasks:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        events, self._events = self._events, []
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

    @classmethod
    def held(cls, key: str, task_id: str, session: ClientSession) -> TaskRecord:
        """A task from before a controller restart, known only by the engine that holds it."""
        return cls(key, task_id, session, wire.pb.Action(), wire.ENCODING_PICKLE, False, 0, [])

    def to_task(self) -> wire.pb.Task:
        return wire.pb.Task(
            task_id=self.key,
            action=self.action,
            encoding=self.encoding,
            submitted=self.submitted,
            direct_results=self.direct_results,
        )
