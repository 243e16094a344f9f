"""The engine's work stream to the controller: commands come down it (tasks, aborts, interrupts,
shutdown); events, direct-task notices and heartbeats go up it in batches."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

import grpc

from pxgrpc import diagnose, wire
from pxgrpc.engine.outbox import Outbox, aborted_event
from pxgrpc.engine.taskqueue import TaskQueue

#: Results sent this recently are sent again after a reconnect: they may have gone down with
#: the old stream (the client keeps the first copy of each).
RESEND_WINDOW = 30.0


class WorkStream:
    """One engine's side of `Engine.Work`, stream after stream (one per registration)."""

    def __init__(
        self,
        outbox: Outbox,
        tasks: TaskQueue,
        accept: Callable[[wire.pb.Task], None],
        emit: Callable[[wire.pb.TaskEvent], None],
        metadata: tuple[tuple[str, str], ...],
    ) -> None:
        self._outbox = outbox
        self._tasks = tasks
        self._accept = accept
        self._emit = emit
        self._metadata = metadata
        #: Seconds between heartbeats (the controller says how many at registration).
        self.heartbeat = 1.0
        self._engine_id = -1
        # Results recently written to the work stream: (when, event), resent after a reconnect.
        self._sent_results: deque[tuple[float, wire.pb.TaskEvent]] = deque(maxlen=1024)
        # Grows with every work stream: the messages of a lost one stop taking events.
        self._stream_number = 0

    async def hold(self, channel: grpc.aio.Channel, reply: wire.pb.RegisterReply) -> str | None:
        """Hold a work stream; None when the controller says stop, else why the stream was lost."""
        work = channel.stream_stream(
            f"/{wire.ENGINE_SERVICE}/Work",
            request_serializer=wire.pb.EngineMessage.SerializeToString,
            response_deserializer=wire.pb.EngineCommand.FromString,
        )
        self._engine_id = reply.engine_id
        self.heartbeat = reply.heartbeat_interval or 1.0
        self._stream_number += 1
        call = work(self._messages(reply, self._stream_number), metadata=self._metadata)
        try:
            async for command in call:
                if self._handle(command):
                    call.cancel()
                    return None
        except grpc.aio.AioRpcError as exc:
            why = f"{exc.code().name}: {diagnose.short(exc.details() or '')}"
        else:
            why = "it ended the work stream"
        call.cancel()
        self._stream_number += 1  # (events wait for the next stream)
        if self._outbox.wakeup is not None:
            self._outbox.wakeup.set()
        return why

    def resend_recent(self) -> None:
        """Queue again the results sent within RESEND_WINDOW (after a reconnect)."""
        cutoff = time.monotonic() - RESEND_WINDOW
        resend = [event for sent, event in self._sent_results if sent >= cutoff]
        self._sent_results.clear()
        self._outbox.resend(resend)

    def sent_result_ids(self) -> set[str]:
        """The tasks whose results were sent lately (and may have to be sent again)."""
        return {e.result.task_id for _, e in self._sent_results}

    async def _messages(
        self, reply: wire.pb.RegisterReply, number: int
    ) -> AsyncIterator[wire.pb.EngineMessage]:
        """The engine's side of work stream `number`: hello, then batched events and heartbeats
        (until a newer stream replaces it)."""
        wakeup = self._outbox.wakeup
        assert wakeup is not None
        yield wire.pb.EngineMessage(engine_id=reply.engine_id, registration_token=reply.registration_token)
        # One timer for the heartbeats, re-armed when it fires (not one per wait: a busy engine
        # waits once per batch): it wakes the sender for an empty message after a heartbeat
        # interval with nothing sent.
        loop = asyncio.get_running_loop()
        last_sent = loop.time()
        timer: asyncio.TimerHandle | None = None

        def heartbeat_due() -> None:
            nonlocal timer
            idle = loop.time() - last_sent
            if idle >= self.heartbeat or self._outbox.lane_notices_waiting():
                # (The lanes' notices ride along, at most one message a heartbeat interval.)
                wakeup.set()
                idle = 0.0
            timer = loop.call_later(self.heartbeat - idle, heartbeat_due)

        timer = loop.call_later(self.heartbeat, heartbeat_due)
        try:
            while number == self._stream_number:
                if not self._outbox:
                    wakeup.clear()
                    await wakeup.wait()
                    if number != self._stream_number:
                        return
                message, release = self._outbox.take()
                last_sent = loop.time()
                now = time.monotonic()
                self._sent_results.extend(
                    (now, e) for e in message.events if e.WhichOneof("kind") == "result"
                )
                yield message
                del message, release  # (the message is written: free what its sender left behind)
        finally:
            if timer is not None:
                timer.cancel()

    def _handle(self, command: wire.pb.EngineCommand) -> bool:
        """Act on a command; True when the engine must stop."""
        for task in command.tasks:
            self._accept(task)
        for task_id in command.abort_task_ids:
            # (A task not started is answered as aborted at once, even while another runs.)
            if self._tasks.abort(task_id):
                self._emit(aborted_event(task_id, self._engine_id))
        if command.interrupt:
            self._tasks.interrupt(command.interrupt_signal or signal.SIGINT)
        return command.shutdown
