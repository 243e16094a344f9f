"""The gRPC handlers of the controller: the Controller service (clients) and Engine service (engines).

Handlers are registered as generic handlers that take raw bytes and parse them here, so that a
malformed message gets INVALID_ARGUMENT naming the message, and so that blob chunks can be
relayed without being parsed at all.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from pxgrpc import certs, security, wire
from pxgrpc.controller.blobs import BlobError, BlobStore
from pxgrpc.controller.registry import EngineRecord, EngineRegistry, IdTaken
from pxgrpc.controller.router import Session as ClientSession
from pxgrpc.controller.router import TaskRouter
from pxgrpc.controller.scatter import concatenate_values, scatter_values

log = logging.getLogger(__name__)

#: How long the result blobs of a finished Execute/Apply/Pull/Gather call wait for their download.
RESULT_BLOB_TTL = 120.0

M = TypeVar("M", bound=Message)
Context = grpc.aio.ServicerContext[Any, Any]


async def parse(cls: type[M], raw: bytes, context: Context) -> M:
    """Parse a request, or abort the call with INVALID_ARGUMENT naming the message type."""
    try:
        return cls.FromString(raw)
    except DecodeError as exc:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"{cls.DESCRIPTOR.name}: not a valid message ({exc})"
        )
        raise  # unreachable: abort raises


class ControllerState:
    """Everything the handlers share."""

    def __init__(
        self,
        heartbeat_interval: float = 1.0,
        prefetch: int = 4,
        *,
        tls: bool = False,
        data_ca: certs.CertKey | None = None,
        client_token: str = "",
    ) -> None:
        self.registry = EngineRegistry()
        #: The controller speaks TLS: engines' data endpoints must too (with a certificate of ours).
        self.tls = tls
        #: The CA (certificate and key) that signs engines' data endpoints (`--tls auto` only).
        self.data_ca = data_ca
        #: Engines prove they hold it before their data endpoint gets a certificate.
        self.client_token = client_token
        #: This controller's own addresses and names (its certificate's hosts, its bind address,
        #: its interfaces' addresses): an engine without the client token never gets a data
        #: certificate for one of them, which would let it pass for the controller.
        self.own_hosts: frozenset[str] = frozenset()
        self.blobs = BlobStore()
        self.router = TaskRouter(self.registry, self.blobs, prefetch=prefetch)
        self.heartbeat_interval = heartbeat_interval
        self.stopping = asyncio.Event()

    async def resolve_targets(self, targets: wire.pb.Targets, context: Context) -> list[int]:
        live = [e.engine_id for e in self.registry.live()]
        if targets.all:
            return live
        if not targets.engine_ids:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "targets: give engine_ids or set all")
        missing = [i for i in targets.engine_ids if i not in live]
        if missing:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"targets.engine_ids: no engine {missing[0]} (engines: {live})"
            )
        return list(targets.engine_ids)


class BlobTransfers:
    """Upload, shared by both services: bytes for tasks (clients) or results (engines)."""

    def __init__(self, state: ControllerState) -> None:
        self.state = state

    async def Upload(self, requests: AsyncIterator[bytes], context: Context) -> wire.pb.UploadReply:
        try:
            return await self.state.blobs.receive(requests)
        except BlobError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise


class ControllerService(BlobTransfers):
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
        session.notify_engines()  # the first message tells the client the engines
        reader = asyncio.create_task(self._read_session(session, requests))
        try:
            # Whatever happened since the last message goes out as one message.
            while (message := await session.next_message()) is not None:
                events, engines_changed = message
                reply = wire.pb.SessionEvent(events=events)
                if engines_changed:
                    reply.engines.CopyFrom(registry.engine_list())
                yield reply
            if reader.done() and not reader.cancelled() and (error := reader.exception()) is not None:
                if isinstance(error, wire.DecodingError):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
                raise error
        finally:
            registry.watchers.discard(session.notify_engines)
            reader.cancel()
            self.router.close_session(session)

    async def _read_session(self, session: ClientSession, requests: AsyncIterator[bytes]) -> None:
        try:
            async for raw in requests:
                try:
                    request = wire.pb.SessionRequest.FromString(raw)
                except DecodeError as exc:
                    # The stream ends with INVALID_ARGUMENT once the tasks sent before are done.
                    log.warning("%s sent a malformed SessionRequest: %s", session.name, exc)
                    raise wire.DecodingError(f"SessionRequest: not a valid message ({exc})") from exc
                self.router.submit_batch(session, request.tasks)
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
        await _check_encoding(request.encoding, context)
        action = wire.pb.Action(execute=wire.pb.ExecuteAction(code=request.code, silent=request.silent))
        async for event in self._run(targets, [action] * len(targets), request.encoding):
            yield event

    async def Apply(self, raw: bytes, context: Context) -> AsyncIterator[wire.pb.TaskEvent]:
        request = await parse(wire.pb.ApplyRequest, raw, context)
        targets = await self.state.resolve_targets(request.targets, context)
        await _check_encoding(request.encoding, context)
        if request.apply.function.WhichOneof("kind") is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "apply.function: required")
        await _check_names(request.apply.kwargs.keys(), "apply.kwargs", context)
        await self._check_values(_values_of_apply(request.apply), context)
        action = wire.pb.Action(apply=request.apply)
        blobs = sorted(wire.blob_ids_of_action(action))
        async for event in self._run(targets, [action] * len(targets), request.encoding, blobs):
            yield event

    async def Push(self, raw: bytes, context: Context) -> AsyncIterator[wire.pb.TaskEvent]:
        request = await parse(wire.pb.PushRequest, raw, context)
        targets = await self.state.resolve_targets(request.targets, context)
        await _check_names(request.namespace.keys(), "namespace", context)
        await self._check_values(((f"namespace[{k!r}]", v) for k, v in request.namespace.items()), context)
        action = wire.pb.Action(push=wire.pb.PushAction(namespace=request.namespace))
        blobs = sorted(wire.blob_ids_of_action(action))
        async for event in self._run(targets, [action] * len(targets), wire.ENCODING_PICKLE, blobs):
            yield event

    async def Pull(self, raw: bytes, context: Context) -> AsyncIterator[wire.pb.TaskEvent]:
        request = await parse(wire.pb.PullRequest, raw, context)
        targets = await self.state.resolve_targets(request.targets, context)
        await _check_encoding(request.encoding, context)
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
        await _check_names([request.name], "name", context)
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
        await _check_encoding(request.encoding, context)
        await _check_names([request.name], "name", context)
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
        async for chunk in _stream_blob(self.state.blobs, request.blob_id, context):
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
            if engine is not None and engine.inflight:
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
                running = 1 if engine.inflight else 0
                entry = reply.engines.add(
                    engine_id=engine.engine_id,
                    queue=len(engine.inflight) - running,
                    completed=engine.completed,
                    tasks=running,
                )
                if request.verbose:
                    entry.queued_task_ids.extend(r.task_id for r in list(engine.inflight.values())[running:])
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


class EngineService(BlobTransfers):
    """Handlers of pxgrpc.v1.Engine."""

    async def Register(self, raw: bytes, context: Context) -> wire.pb.RegisterReply:
        request = await parse(wire.pb.RegisterRequest, raw, context)
        data_cert = await self._data_certificate(request, context)
        try:
            engine = self.state.registry.register(request)
        except IdTaken as exc:
            code = grpc.StatusCode.INVALID_ARGUMENT if exc.invalid else grpc.StatusCode.ALREADY_EXISTS
            await context.abort(code, str(exc))
            raise  # unreachable: abort raises
        digest = hashlib.sha256(self.state.client_token.encode()).digest() if data_cert else b""
        return wire.pb.RegisterReply(
            engine_id=engine.engine_id,
            registration_token=engine.registration_token,
            heartbeat_interval=self.state.heartbeat_interval,
            data_cert_pem=data_cert,
            client_token_sha256=digest,
        )

    async def _data_certificate(self, request: wire.pb.RegisterRequest, context: Context) -> bytes:
        """On a TLS cluster, sign the engine's data endpoint certificate request, or (when we
        cannot) clear its `data_url`: clients could not trust the endpoint. Plaintext clusters
        take `data_url` as sent.

        Engines started from the full connection file prove they hold the client token
        (`data_csr_mac`) and get a certificate for the host they name. Engines with the engine
        token only send no MAC: they get one only for the address their call comes from, and
        only when that is none of the controller's own (`own_hosts`, loopback); elsewhere (an
        engine on the controller's host) they get none and their data goes through us."""
        if not self.state.tls:
            return b""
        ca = self.state.data_ca
        if ca is None or not request.data_url or not request.data_csr_pem:
            request.data_url = ""
            return b""
        try:
            host, _ = security.split_url(request.data_url)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"data_url: {exc}")
            raise  # unreachable: abort raises
        if not request.data_csr_mac:
            peer = peer_address(context.peer())
            if peer is None:  # (a unix socket: no address to sign for)
                request.data_url = ""
                return b""
            if normal_host(host) != str(peer):
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"data_url: host {host!r} is not {str(peer)!r}, the address this registration "
                    "comes from; without data_csr_mac (the client token) the controller signs "
                    "a data endpoint certificate for that address only",
                )
            if peer.is_loopback or str(peer) in self.state.own_hosts:
                request.data_url = ""  # the controller's own address: never for an engine token
                return b""
            return await self._sign_data_csr(ca, request.data_csr_pem, str(peer), context)
        expected = certs.csr_mac(request.data_csr_pem, self.state.client_token)
        if not hmac.compare_digest(request.data_csr_mac, expected):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "data_csr_mac: not keyed with the client token; only engines started from the "
                "full connection file (controller.json) serve a data endpoint at any address",
            )
        return await self._sign_data_csr(ca, request.data_csr_pem, host, context)

    async def _sign_data_csr(self, ca: certs.CertKey, csr_pem: bytes, host: str, context: Context) -> bytes:
        try:
            return certs.sign_server_csr(ca, csr_pem, host)
        except certs.CsrError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"data_csr_pem: {exc}")
            raise  # unreachable: abort raises

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
                self.state.router.on_events(engine, message.events)
        except (DecodeError, grpc.RpcError, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            reason = f"disconnected ({exc.__class__.__name__})"
        self.state.router.engine_lost(engine, f"died or {reason}")

    async def Download(self, raw: bytes, context: Context) -> AsyncIterator[bytes]:
        request = await parse(wire.pb.DownloadRequest, raw, context)
        async for chunk in _stream_blob(self.state.blobs, request.blob_id, context):
            yield chunk


async def _stream_blob(blobs: BlobStore, blob_id: str, context: Context) -> AsyncIterator[bytes]:
    try:
        async for chunk in blobs.send(blob_id):
            yield chunk
    except BlobError as exc:
        code = grpc.StatusCode.NOT_FOUND if exc.not_found else grpc.StatusCode.FAILED_PRECONDITION
        await context.abort(code, str(exc))
    except TimeoutError:
        await context.abort(
            grpc.StatusCode.DEADLINE_EXCEEDED, f"blob {blob_id}: upload did not start in time"
        )


async def _check_names(names: Any, field: str, context: Context) -> None:
    for name in names:
        if not str(name).isidentifier():
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {name!r} is not a Python identifier"
            )


async def _check_encoding(encoding: int, context: Context) -> None:
    if encoding not in (wire.ENCODING_PICKLE, wire.ENCODING_TYPED_ONLY, wire.ENCODING_TYPED_OR_REPR):
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"encoding: unknown ResultEncoding {encoding} (0 PICKLE, 1 TYPED_ONLY, 2 TYPED_OR_REPR)",
        )


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


Handler = Callable[..., Any]


def generic_handlers(state: ControllerState) -> list[grpc.GenericRpcHandler]:
    """The two services as generic handlers (raw bytes in; protobuf or raw bytes out)."""
    controller = ControllerService(state)
    engine = EngineService(state)
    ser = _serialize
    c: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "ListEngines": grpc.unary_unary_rpc_method_handler(controller.ListEngines, response_serializer=ser),
        "Session": grpc.stream_stream_rpc_method_handler(controller.Session, response_serializer=ser),
        "Execute": grpc.unary_stream_rpc_method_handler(controller.Execute, response_serializer=ser),
        "Apply": grpc.unary_stream_rpc_method_handler(controller.Apply, response_serializer=ser),
        "Push": grpc.unary_stream_rpc_method_handler(controller.Push, response_serializer=ser),
        "Pull": grpc.unary_stream_rpc_method_handler(controller.Pull, response_serializer=ser),
        "Scatter": grpc.unary_stream_rpc_method_handler(controller.Scatter, response_serializer=ser),
        "Gather": grpc.unary_unary_rpc_method_handler(controller.Gather, response_serializer=ser),
        "Upload": grpc.stream_unary_rpc_method_handler(controller.Upload, response_serializer=ser),
        "Download": grpc.unary_stream_rpc_method_handler(controller.Download),
        "Abort": grpc.unary_unary_rpc_method_handler(controller.Abort, response_serializer=ser),
        "Interrupt": grpc.unary_unary_rpc_method_handler(controller.Interrupt, response_serializer=ser),
        "QueueStatus": grpc.unary_unary_rpc_method_handler(controller.QueueStatus, response_serializer=ser),
        "Shutdown": grpc.unary_unary_rpc_method_handler(controller.Shutdown, response_serializer=ser),
    }
    e: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Register": grpc.unary_unary_rpc_method_handler(engine.Register, response_serializer=ser),
        "Work": grpc.stream_stream_rpc_method_handler(engine.Work, response_serializer=ser),
        "Upload": grpc.stream_unary_rpc_method_handler(engine.Upload, response_serializer=ser),
        "Download": grpc.unary_stream_rpc_method_handler(engine.Download),
    }
    return [
        grpc.method_handlers_generic_handler(wire.CONTROLLER_SERVICE, c),
        grpc.method_handlers_generic_handler(wire.ENGINE_SERVICE, e),
    ]


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def peer_address(peer: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address in a gRPC peer string ("ipv4:10.0.0.2:5123", "ipv6:[::1]:5123"); None for
    other transports (unix sockets). IPv4-mapped IPv6 addresses come back as IPv4."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    try:
        host, _ = security.split_url(rest)
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def normal_host(host: str) -> str:
    """An address in one spelling (IPv4-mapped IPv6 as IPv4, zone dropped); names lower-cased."""
    name = host.strip().strip("[]").split("%", 1)[0]
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return name.lower().rstrip(".")
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)
