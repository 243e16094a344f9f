"""Tasks clients hand this engine directly (`EngineData.Tasks`), one hop instead of the relay.

A direct task joins the same work queue as the tasks the controller sends; its output and
result go back on the stream it came on, and the controller hears that it started and finished
(`EngineMessage.direct_started` / `direct_finished`) so that queue status, Abort and Interrupt
see it. Should its stream break before its result is sent, the result goes up the work stream
instead, and the controller relays it to the client's session.

Task lanes (`pxgrpc.engine.lanes`) are such streams without gRPC: the main thread reads their
tasks (`tasks`) and their events go back the same way (`route`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeAlias

import grpc

from pxgrpc import wire
from pxgrpc.engine.lanes import EngineLane
from pxgrpc.engine.notices import START_NOTICE_DELAY
from pxgrpc.engine.outbox import Outbox, aborted_event
from pxgrpc.engine.taskqueue import LaneHandler, TaskQueue
from pxgrpc.loopthread import Batches, LoopThread

log = logging.getLogger(__name__)


Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


def check_task_id(task_id: str) -> None:
    """ValueError unless a direct task's id is "<session_id>/<task id>"."""
    session, slash, rest = task_id.partition("/")
    if not (session and slash and rest):
        raise ValueError(f"Task.task_id: {task_id!r} is not '<session_id>/<task id>'")


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


class DirectWork(LaneHandler):
    """The `EngineData.Tasks` service of one engine and its task lanes, and which stream (or
    lane) each direct task's events go to.

    `accept(task)` queues a task of a `Tasks` stream for the main thread (in the I/O thread);
    a task the main thread read from a lane goes straight on the `queue` (which also says
    whether it was aborted before it came); the `outbox` tells the controller of direct tasks
    (`notify_direct` in the I/O thread, `note_lane` from the main thread, later) and takes the
    events whose stream is gone up the work stream (`put`).
    """

    def __init__(
        self,
        io: LoopThread,
        accept: Callable[[wire.pb.Task], None],
        queue: TaskQueue,
        outbox: Outbox,
        engine_id: Callable[[], int],
    ) -> None:
        self._io = io
        self._accept = accept
        self._queue = queue
        self._outbox = outbox
        self._notify = outbox.notify_direct
        self._fallback = outbox.put
        self._note_lane = outbox.note_lane
        self._engine_id = engine_id
        self._lock = threading.Lock()
        self._streams: dict[str, DirectStream | EngineLane] = {}
        # When their client sent the lanes' tasks (`Task.submitted`).
        self._lane_sent: dict[str, float] = {}
        #: Runs a lane's task the moment it is read when nothing is queued, if it is one that
        #: needs no queue (`Engine.run_at_once`): False for others. Set by the engine.
        self.at_once: Callable[[EngineLane, wire.pb.Task], bool] | None = None

    def route(self, event: wire.pb.TaskEvent) -> bool:
        """Send an event of a direct task down its stream (from any thread); False for other
        tasks, and for direct tasks whose stream is gone (the work stream takes those)."""
        if not self._streams:
            return False
        kind = event.WhichOneof("kind")
        if kind is None:
            return False
        task_id = getattr(event, kind).task_id
        finished = kind == "result"
        with self._lock:
            stream = self._streams.get(task_id)
            if stream is not None and finished:
                del self._streams[task_id]
        if stream is None or not stream.put(event):
            return False
        if finished and isinstance(stream, EngineLane):
            self._lane_task_over(task_id, self._lane_sent.pop(task_id, 0.0))
        return True

    def _lane_task_over(self, task_id: str, submitted: float) -> None:
        """A lane's task has its result: the controller hears of it (with the next message up the
        work stream; at once if its client sent it long ago)."""
        self._note_lane(finished=task_id)
        if time.time() - submitted > START_NOTICE_DELAY:
            # (Its client has told the controller of it, and the controller may count the
            # engine busy with it: say it is over now, not with the next heartbeat.)
            self._outbox.fold_lane_notices_soon()

    def answer(self, lane: EngineLane, task: wire.pb.Task, event: wire.pb.TaskEvent) -> None:
        """(Main thread.) The result of a lane's task run the moment it was read (`at_once`):
        straight back on the lane (to the work stream, to be relayed, if the lane is closed)."""
        if not lane.put(event):
            self._fallback(event)
        self._lane_task_over(task.task_id, task.submitted)

    # --- task lanes (main thread) -----------------------------------------------------------

    def tasks(self, lane: EngineLane, tasks: list[wire.pb.Task]) -> bool:
        """Tasks read from a lane: queued in order (False, and the lane told why, for a bad one)."""
        queue = self._queue
        for task in tasks:
            task_id = task.task_id
            try:
                check_task_id(task_id)
            except ValueError as exc:
                lane.refuse(str(exc))
                return False
            if queue.aborted_early(task_id):
                lane.put(aborted_event(task_id, self._engine_id()))
                self._note_lane(finished=task_id)  # (the controller counts it till then)
                continue
            if self.at_once is not None and queue.idle() and self.at_once(lane, task):
                continue
            with self._lock:
                self._streams[task_id] = lane
                self._lane_sent[task_id] = task.submitted
            self._note_lane(started=task_id)
            queue.accept(task)
        return True

    def closed(self, lane: EngineLane) -> None:
        """A lane's client has gone (or the lane was refused)."""
        self._close(lane)
        lane.close()

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
                check_task_id(task.task_id)
                with self._lock:
                    self._streams[task.task_id] = stream
                self._notify([task.task_id], [])
                self._accept(task)

    def _close(self, stream: DirectStream | EngineLane) -> None:
        """A client's stream ended: its tasks' events from now on (and any not sent) go up the
        work stream, to be relayed."""
        with self._lock:
            orphans = [key for key, s in self._streams.items() if s is stream]
            for key in orphans:
                del self._streams[key]
                self._lane_sent.pop(key, None)
        unsent = stream.close() if isinstance(stream, DirectStream) else []
        if orphans or unsent:
            log.warning("a direct task stream ended: %d task(s) report through the controller", len(orphans))
        for event in unsent:
            self._fallback(event)
