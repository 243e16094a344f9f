"""Capture of a task's stdout and stderr, streamed to the controller while the task runs."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable

from pxgrpc import wire

#: How long written text may wait before it is sent (coalesces bursts of small writes).
FLUSH_DELAY = 0.02
#: Text waiting beyond this many characters is sent at once: each OutputEvent stays well under
#: gRPC's message size limit however fast a task prints.
MAX_PENDING_CHARS = 1 << 20

Emit = Callable[[wire.pb.TaskEvent], None]
Schedule = Callable[[float, Callable[[], None]], None]


class OutputStream(io.TextIOBase):
    """A file-like sys.stdout/sys.stderr replacement that sends text as OutputEvents.

    `task_id` names the task whose output this is; text written between tasks goes to the last
    task (the controller drops it if that task is over).
    """

    def __init__(
        self, stream: wire.pb.OutputStream.ValueType, name: str, emit: Emit, schedule: Schedule
    ) -> None:
        super().__init__()
        self.stream = stream
        self._name = name
        self._emit = emit
        self._schedule = schedule
        self._lock = threading.Lock()
        self._parts: list[str] = []
        #: How many characters were written and not sent yet.
        self.pending = 0
        self._scheduled = False
        self.task_id = ""

    @property
    def name(self) -> str:
        return self._name

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if not text:
            return 0
        with self._lock:
            self._parts.append(text)
            self.pending += len(text)
            full = self.pending >= MAX_PENDING_CHARS
            schedule = not self._scheduled
            self._scheduled = True
        if full:
            self.send()
        elif schedule:
            self._schedule(FLUSH_DELAY, self.send)
        return len(text)

    def send(self) -> None:
        """Send what was written so far as one OutputEvent."""
        with self._lock:
            parts, self._parts = self._parts, []
            self.pending = 0
            self._scheduled = False
            task_id = self.task_id
        text = "".join(parts)
        # (One print may be larger than any message may be: it goes in pieces.)
        for start in range(0, len(text), MAX_PENDING_CHARS):
            piece = text[start : start + MAX_PENDING_CHARS]
            event = wire.pb.OutputEvent(task_id=task_id, stream=self.stream, text=piece)
            self._emit(wire.pb.TaskEvent(output=event))

    def flush(self) -> None:
        pass  # sending is asynchronous; the engine sends everything before each result
