"""Tasks clients hand this engine directly (`EngineData.Tasks`), one hop instead of the relay.

A direct task joins the same work queue as the tasks the controller sends; its output and
result go back on the stream it came on, and the controller hears that it started and finished
(`EngineMessage.direct_started` / `direct_finished`) so that queue status, Abort and Interrupt
see it. Should its stream break before its result is sent, the result goes up the work stream
instead, and the controller relays it to the client's session.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeAlias

import grpc

from pxgrpc import wire
from pxgrpc.loopthread import Batches, LoopThread

log = logging.getLogger(__name__)

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


def task_id_of(event: wire.pb.TaskEvent) -> str:
    """The task an event belongs to."""
    kind = event.WhichOneof("kind")
    inner = getattr(event, kind) if kind else None
    return inner.task_id if inner is not None else ""


class DirectStream:
    """One client's `Tasks` stream: events for it wait here and leave in batches."""

    def __init__(self, io: LoopThread) -> None:
        self._io = io
        self._events: Batches[wire.pb.TaskEvent] = Batches()
        self._lock = threading.Lock()  # (a put sees `closed`, or `close` returns its event)
        self.closed = False

    def put(self, event: wire.pb.TaskEvent) -> bool:
        """Queue an event (from any thread); False once the stream is closed."""
        with self._lock:
            if self.closed:
                return False
            wake = self._events.put(event)
        if wake:
            if self._io.in_loop():
                self._events.wake()
            else:
                self._io.call_soon(self._events.wake)
        return True

    def stop(self) -> None:
        """End `batches` (in the I/O thread)."""
        self._events.end()

    def batches(self) -> AsyncIterator[list[wire.pb.TaskEvent]]:
        """The queued events, a batch at a time, until `stop` or cancelled."""
        return self._events.batches()

    def close(self) -> list[wire.pb.TaskEvent]:
        """Stop taking events; those not sent yet are returned."""
        with self._lock:
            self.closed = True
            return self._events.take_all()


class DirectWork:
    """The `EngineData.Tasks` service of one engine, and which stream each direct task's events
    go to.

    `accept(task)` queues a task for the main thread; `notify(started, finished)` tells the
    controller (on the work stream); `fallback(event)` sends an event up the work stream.
    """

    def __init__(
        self,
        io: LoopThread,
        accept: Callable[[wire.pb.Task], None],
        notify: Callable[[list[str], list[str]], None],
        fallback: Callable[[wire.pb.TaskEvent], None],
    ) -> None:
        self._io = io
        self._accept = accept
        self._notify = notify
        self._fallback = fallback
        self._lock = threading.Lock()
        self._streams: dict[str, DirectStream] = {}

    def route(self, event: wire.pb.TaskEvent) -> bool:
        """Send an event of a direct task down its stream (from any thread); False for other
        tasks, and for direct tasks whose stream is gone (the work stream takes those)."""
        if not self._streams:
            return False
        task_id = task_id_of(event)
        with self._lock:
            stream = self._streams.get(task_id)
            if stream is not None and event.WhichOneof("kind") == "result":
                del self._streams[task_id]
        return stream is not None and stream.put(event)

    async def Tasks(
        self, requests: AsyncIterator[wire.pb.DirectTasks], context: Context
    ) -> AsyncIterator[wire.pb.DirectEvents]:
        stream = DirectStream(self._io)
        reader = asyncio.ensure_future(self._read(requests, stream))
        reader.add_done_callback(lambda r: stream.stop() if r.cancelled() or r.exception() else None)
        try:
            async for events in stream.batches():
                yield wire.pb.DirectEvents(events=events)
                finished = [e.result.task_id for e in events if e.WhichOneof("kind") == "result"]
                if finished:
                    self._notify([], finished)
        finally:
            reader.cancel()
            self._close(stream)
        error = reader.exception() if reader.done() and not reader.cancelled() else None
        if isinstance(error, ValueError):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))

    async def _read(self, requests: AsyncIterator[wire.pb.DirectTasks], stream: DirectStream) -> None:
        async for message in requests:
            for task in message.tasks:
                session, slash, rest = task.task_id.partition("/")
                if not (session and slash and rest):
                    raise ValueError(f"Task.task_id: {task.task_id!r} is not '<session_id>/<task id>'")
                with self._lock:
                    self._streams[task.task_id] = stream
                self._notify([task.task_id], [])
                self._accept(task)

    def _close(self, stream: DirectStream) -> None:
        """A client's stream ended: its tasks' events from now on (and any not sent) go up the
        work stream, to be relayed."""
        with self._lock:
            orphans = [key for key, s in self._streams.items() if s is stream]
            for key in orphans:
                del self._streams[key]
        unsent = stream.close()
        if orphans or unsent:
            log.warning("a direct task stream ended: %d task(s) report through the controller", len(orphans))
        for event in unsent:
            self._fallback(event)
