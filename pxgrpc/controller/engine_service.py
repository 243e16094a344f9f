"""The Engine service (pxgrpc.v1.Engine): the calls engines make.

An engine registers (and, on a TLS cluster, gets its data endpoint certificate: see
`data_certs`), then holds one `Work` stream: tasks go down, events and results come up.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Iterable

import grpc
from google.protobuf.message import DecodeError

from pxgrpc import wire
from pxgrpc.controller.data_certs import data_certificate
from pxgrpc.controller.registry import EngineRecord, IdTaken
from pxgrpc.controller.requests import Context, parse
from pxgrpc.controller.transfers import BlobTransfers, stream_blob


class EngineService(BlobTransfers):
    """Handlers of pxgrpc.v1.Engine."""

    async def Register(self, raw: bytes, context: Context) -> wire.pb.RegisterReply:
        request = await parse(wire.pb.RegisterRequest, raw, context)
        data_cert = await data_certificate(self.state, request, context)
        try:
            engine = self.state.registry.register(request)
        except IdTaken as exc:
            code = grpc.StatusCode.INVALID_ARGUMENT if exc.invalid else grpc.StatusCode.ALREADY_EXISTS
            await context.abort(code, str(exc))
            raise  # unreachable: abort raises
        if request.held_task_ids:
            self.state.router.adopt(engine, request.held_task_ids)
        digest = hashlib.sha256(self.state.client_token.encode()).digest() if data_cert else b""
        return wire.pb.RegisterReply(
            engine_id=engine.engine_id,
            registration_token=engine.registration_token,
            heartbeat_interval=self.state.heartbeat_interval,
            data_cert_pem=data_cert,
            client_token_sha256=digest,
        )

    async def Work(
        self, requests: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[wire.pb.EngineCommand]:
        it = aiter(requests)
        try:
            hello = await parse(wire.pb.EngineMessage, await anext(it), context)
        except StopAsyncIteration:
            return
        engine = self.state.registry.get(hello.engine_id)
        if engine is None or engine.connected or engine.registration_token != hello.registration_token:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"EngineMessage.registration_token: not the registration of engine {hello.engine_id}; "
                "call Register first",
            )
            return
        self.state.registry.connected(engine)
        reader = asyncio.create_task(self._read_engine(engine, it))
        try:
            while (command := await engine.next_command()) is not None:
                yield command
        finally:
            reader.cancel()
            self.state.router.engine_lost(engine, "disconnected")

    async def _read_engine(self, engine: EngineRecord, it: AsyncIterator[bytes]) -> None:
        reason = "disconnected"
        try:
            async for raw in it:
                engine.last_seen = time.monotonic()
                message = wire.pb.EngineMessage.FromString(raw)
                if message.direct_started:
                    self.state.router.adopt(engine, message.direct_started)
                self.state.router.on_events(engine, message.events)
                if message.direct_finished:
                    direct_finished(engine, message.direct_finished)
        except (DecodeError, grpc.RpcError, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            reason = f"disconnected ({exc.__class__.__name__})"
        self.state.router.engine_lost(engine, f"died or {reason}")

    async def ReportExit(self, raw: bytes, context: Context) -> wire.pb.EngineExitReply:
        report = await parse(wire.pb.EngineExit, raw, context)
        engine_id = self.state.router.engine_exited(report)
        if engine_id is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"EngineExit: no engine was pid {report.pid} on {report.hostname!r}",
            )
            raise AssertionError("unreachable: abort raises")
        return wire.pb.EngineExitReply(engine_id=engine_id)

    async def Download(self, raw: bytes, context: Context) -> AsyncIterator[bytes]:
        request = await parse(wire.pb.DownloadRequest, raw, context)
        async for chunk in stream_blob(self.state.blobs, request.blob_id, context, request.host_key):
            yield chunk


def direct_finished(engine: EngineRecord, keys: Iterable[str]) -> None:
    """Tasks a client sent this engine directly got their result back on the direct stream:
    forget them here (they count as completed, also those that ran too briefly to be told of)."""
    for key in keys:
        engine.completed += 1
        record = engine.inflight.pop(key, None) or engine.announced.pop(key, None)
        if record is not None:
            record.session.tasks.pop(record.task_id, None)
        if record is None or not record.announced:  # its client's announcement may still come
            engine.remember_direct_finished(key)
