"""The Controller service (pxgrpc.v1.Controller): the calls clients make.

A client's tasks arrive on its `Session` stream or in one-shot calls (Execute, Apply, Push, Pull,
Scatter, Gather), each becoming one task per target engine for the router; the rest (Abort,
Interrupt, QueueStatus, Shutdown, ListEngines, Upload/Download) act on the registry directly.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Iterable, Iterator

import grpc
from google.protobuf.message import DecodeError

from pxgrpc import wire
from pxgrpc.controller.requests import Context, check_encoding, check_names, parse
from pxgrpc.controller.scatter import concatenate_values, scatter_values
from pxgrpc.controller.state import ControllerState
from pxgrpc.controller.tasks import ClientSession
from pxgrpc.controller.transfers import BlobTransfers, stream_blob

log = logging.getLogger(__name__)

#: How long the result blobs of a finished Execute/Apply/Pull/Gather call wait for their download.
RESULT_BLOB_TTL = 120.0


class ControllerService(BlobTransfers):
    share_uploads = True
    """Handlers of pxgrpc.v1.Controller."""

    def __init__(self, state: ControllerState) -> None:
        super().__init__(state)
        self.router = state.router

    async def ListEngines(self, raw: bytes, context: Context) -> wire.pb.ListEnginesReply:
        await parse(wire.pb.ListEnginesRequest, raw, context)
        return self.state.registry.engine_list()

    async def Session(
        self, requests: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[wire.pb.SessionEvent]:
        session = ClientSession(context.peer())
        registry = self.state.registry
        registry.watchers.add(session.notify_engines)
        self.state.session_wakers.add(session.notify_engines)
        session.notify_engines()  # the first message tells the client the engines
        reader = asyncio.create_task(self._read_session(session, requests))
        try:
            # Whatever happened since the last message goes out as one message.
            while (message := await session.next_message()) is not None:
                events, engines_changed = message
                reply = wire.pb.SessionEvent(events=events)
                if engines_changed:
                    reply.engines.CopyFrom(registry.engine_list())
                reply.controller_stopping = self.state.stopping.is_set()
                yield reply
            if reader.done() and not reader.cancelled() and (error := reader.exception()) is not None:
                if isinstance(error, wire.DecodingError):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
                raise error
        finally:
            registry.watchers.discard(session.notify_engines)
            self.state.session_wakers.discard(session.notify_engines)
            reader.cancel()
            self.router.close_session(session)

    async def _read_session(self, session: ClientSession, requests: AsyncIterator[bytes]) -> None:
        try:
            async for raw in requests:
                await session.wait_for_room()  # (backpressure: see tasks.MAX_SESSION_BACKLOG)
                try:
                    request = wire.pb.SessionRequest.FromString(raw)
                except DecodeError as exc:
                    # The stream ends with INVALID_ARGUMENT once the tasks sent before are done.
                    log.warning("%s sent a malformed SessionRequest: %s", session.name, exc)
                    raise wire.DecodingError(f"SessionRequest: not a valid message ({exc})") from exc
                if request.session_id or request.resume_task_ids:
                    self.router.resume(session, request.session_id, request.resume_task_ids)
                self.router.submit_batch(session, request.tasks)
            session.ended_cleanly = True  # the client half-closed: it will not resume
        finally:
            session.finish_input()

    async def _run(
        self,
        targets: list[int],
        actions: list[wire.pb.Action],
        encoding: wire.pb.ResultEncoding.ValueType,
        blob_ids: list[str] | None = None,
    ) -> AsyncIterator[wire.pb.TaskEvent]:
        """Submit one task per target and stream their events until every result is in."""
        session = ClientSession("call")
        result_blob_ids: list[str] = []
        try:
            for i, (engine_id, action) in enumerate(zip(targets, actions, strict=True)):
                submit = wire.pb.SubmitTask(
                    task_id=str(i),
                    engine_id=engine_id,
                    action=action,
                    encoding=encoding,
                    blob_ids=blob_ids or [],
                )
                self.router.submit(session, submit)
            remaining = len(targets)
            while remaining:
                for event in await session.next_events():
                    if event.WhichOneof("kind") == "result":
                        remaining -= 1
                        result_blob_ids.extend(event.result.blob_ids)
                    yield event
        finally:
            # Result blobs outlive the call: the caller downloads them after the last event.
            session.result_blobs.clear()
            self.router.close_session(session)
            for blob_id in result_blob_ids:
                self.state.blobs.expire(blob_id, RESULT_BLOB_TTL)

    async def _check_values(self, values: Iterable[tuple[str, wire.pb.Value]], context: Context) -> None:
        """Abort with INVALID_ARGUMENT (NOT_FOUND for an unknown blob) naming the first bad field."""
        for where, value in values:
            try:
                wire.validate_value(value, where, self.state.blobs.size)
            except wire.UnknownBlobError as exc:
                await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
            except wire.DecodingError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def Execute(self, raw: bytes, context: Context) -> AsyncIterator[wire.pb.TaskEvent]:
        request = await parse(wire.pb.ExecuteRequest, raw, context)
        targets = await self.state.resolve_targets(request.targets, context)
        await check_encoding(request.encoding, context)
        action = wire.pb.Action(execute=wire.pb.ExecuteAction(code=request.code, silent=request.silent))
        async for event in self._run(targets, [action] * len(targets), request.encoding):
            yield event

    async def Apply(self, raw: bytes, context: Context) -> AsyncIterator[wire.pb.TaskEvent]:
        request = await parse(wire.pb.ApplyRequest, raw, context)
        targets = await self.state.resolve_targets(request.targets, context)
        await check_encoding(request.encoding, context)
        if request.apply.function.WhichOneof("kind") is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "apply.function: required")
        await check_names(request.apply.kwargs.keys(), "apply.kwargs", context)
        await self._check_values(_values_of_apply(request.apply), context)
        action = wire.pb.Action(apply=request.apply)
        blobs = sorted(wire.blob_ids_of_action(action))
        async for event in self._run(targets, [action] * len(targets), request.encoding, blobs):
            yield event

    async def Push(self, raw: bytes, context: Context) -> AsyncIterator[wire.pb.TaskEvent]:
        request = await parse(wire.pb.PushRequest, raw, context)
        targets = await self.state.resolve_targets(request.targets, context)
        await check_names(request.namespace.keys(), "namespace", context)
        await self._check_values(((f"namespace[{k!r}]", v) for k, v in request.namespace.items()), context)
        action = wire.pb.Action(push=wire.pb.PushAction(namespace=request.namespace))
        blobs = sorted(wire.blob_ids_of_action(action))
        async for event in self._run(targets, [action] * len(targets), wire.ENCODING_PICKLE, blobs):
            yield event

    async def Pull(self, raw: bytes, context: Context) -> AsyncIterator[wire.pb.TaskEvent]:
        request = await parse(wire.pb.PullRequest, raw, context)
        targets = await self.state.resolve_targets(request.targets, context)
        await check_encoding(request.encoding, context)
        if not request.names:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "names: at least one name is required")
        for i, name in enumerate(request.names):
            if not all(part.isidentifier() for part in name.split(".")):
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"names[{i}]: {name!r} is not a (dotted) Python name"
                )
        action = wire.pb.Action(pull=wire.pb.PullAction(names=request.names, single=request.single))
        async for event in self._run(targets, [action] * len(targets), request.encoding):
            yield event

    async def Scatter(self, raw: bytes, context: Context) -> AsyncIterator[wire.pb.TaskEvent]:
        request = await parse(wire.pb.ScatterRequest, raw, context)
        targets = await self.state.resolve_targets(request.targets, context)
        await check_names([request.name], "name", context)
        await self._check_values([("value", request.value)], context)
        try:
            parts = scatter_values(request.value, len(targets))
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise
        actions = [wire.pb.Action(push=wire.pb.PushAction(namespace={request.name: part})) for part in parts]
        blobs = sorted(wire.blob_ids_of(request.value))
        async for event in self._run(targets, actions, wire.ENCODING_PICKLE, blobs):
            yield event

    async def Gather(self, raw: bytes, context: Context) -> wire.pb.GatherReply:
        request = await parse(wire.pb.GatherRequest, raw, context)
        targets = await self.state.resolve_targets(request.targets, context)
        await check_encoding(request.encoding, context)
        await check_names([request.name], "name", context)
        action = wire.pb.Action(pull=wire.pb.PullAction(names=[request.name], single=True))
        results: dict[int, wire.pb.TaskResult] = {}
        async for event in self._run(targets, [action] * len(targets), request.encoding):
            if event.WhichOneof("kind") == "result":
                results[int(event.result.task_id)] = event.result
        ordered = [results[i] for i in range(len(targets))]
        if any(r.status != wire.TASK_OK for r in ordered):
            return wire.pb.GatherReply(results=ordered)  # no value: see the failed results
        value = concatenate_values([r.value for r in ordered])
        for r in ordered:
            r.ClearField("value")
        return wire.pb.GatherReply(value=value, results=ordered)

    async def Download(self, raw: bytes, context: Context) -> AsyncIterator[bytes]:
        request = await parse(wire.pb.DownloadRequest, raw, context)
        async for chunk in stream_blob(self.state.blobs, request.blob_id, context):
            yield chunk
        self.router.result_blob_done(request.blob_id)  # a client fetches a result blob once

    async def Abort(self, raw: bytes, context: Context) -> wire.pb.AbortReply:
        request = await parse(wire.pb.AbortRequest, raw, context)
        engine_ids: list[int] = []
        if request.targets.all or request.targets.engine_ids:
            engine_ids = await self.state.resolve_targets(request.targets, context)
        aborted = self.router.abort(None, list(request.task_ids), engine_ids)
        return wire.pb.AbortReply(aborted=aborted)

    async def Interrupt(self, raw: bytes, context: Context) -> wire.pb.InterruptReply:
        request = await parse(wire.pb.InterruptRequest, raw, context)
        signal_number = await _check_signal(request.signal_number, context)
        interrupted = []
        for engine_id in await self.state.resolve_targets(request.targets, context):
            engine = self.state.registry.get(engine_id)
            if engine is not None and (engine.inflight or engine.announced or request.include_idle):
                engine.send_interrupt(signal_number)
                interrupted.append(engine_id)
        return wire.pb.InterruptReply(engine_ids=interrupted)

    async def QueueStatus(self, raw: bytes, context: Context) -> wire.pb.QueueStatusReply:
        request = await parse(wire.pb.QueueStatusRequest, raw, context)
        ids = (
            set(await self.state.resolve_targets(request.targets, context))
            if (request.targets.all or request.targets.engine_ids)
            else {e.engine_id for e in self.state.registry.live()}
        )
        reply = wire.pb.QueueStatusReply(unassigned=self.router.unassigned)
        for engine in self.state.registry.live():
            if engine.engine_id in ids:
                held = engine.held()  # (announced direct tasks count before the engine tells of them)
                running = 1 if held else 0
                entry = reply.engines.add(
                    engine_id=engine.engine_id,
                    queue=len(held) - running,
                    completed=engine.completed,
                    tasks=running,
                )
                if request.verbose:
                    entry.queued_task_ids.extend(r.task_id for r in held[running:])
        return reply

    async def Shutdown(self, raw: bytes, context: Context) -> wire.pb.ShutdownReply:
        request = await parse(wire.pb.ShutdownRequest, raw, context)
        ids: list[int] = []
        if request.targets.all or request.targets.engine_ids:
            ids = await self.state.resolve_targets(request.targets, context)
        for engine_id in ids:
            engine = self.state.registry.get(engine_id)
            if engine is not None:
                engine.send_shutdown()
        if request.controller:
            asyncio.get_running_loop().call_later(0.2, self.state.stopping.set)
        return wire.pb.ShutdownReply(engine_ids=ids)


async def _check_signal(signal_number: int, context: Context) -> int:
    """`InterruptRequest.signal_number` as a signal of this platform (0 means SIGINT)."""
    if signal_number == 0:
        return signal.SIGINT
    try:
        return signal.Signals(signal_number)
    except ValueError:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"signal_number: {signal_number} is not a signal on the controller's platform "
            "(0 or 2 SIGINT, 15 SIGTERM, 9 SIGKILL, ...)",
        )
        raise  # unreachable: abort raises


def _values_of_apply(apply: wire.pb.ApplyAction) -> Iterator[tuple[str, wire.pb.Value]]:
    yield "apply.function", apply.function
    for i, arg in enumerate(apply.args):
        yield f"apply.args[{i}]", arg
    for key, kwarg in apply.kwargs.items():
        yield f"apply.kwargs[{key!r}]", kwarg
