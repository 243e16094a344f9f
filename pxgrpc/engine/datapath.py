"""The engine's data endpoint (the `EngineData` service): bulk data between a client and
this engine in one hop, instead of through the controller.

A client uploads the blobs of a task here before it submits the task, and downloads here the
result blobs of tasks it submitted with `direct_results`. Chunks are taken and given as raw
serialized `BlobChunk`s, as on the controller. The endpoint runs in the engine's I/O thread.
On a plaintext loopback cluster it is plain TCP on 127.0.0.1; on a TLS cluster it speaks TLS
with a certificate the controller's CA signs at registration (`DataCertificate`), and asks for
client certificates when the cluster does. Clients fall back to the controller when they cannot
reach it (see `offers_data` for when it is offered).

A client on this engine's host (the same boot id: `host_key`) may move large blobs as shared
memory instead of bytes (`pxgrpc.sharedmem`): an upload whose header names a file of the
client's is mapped privately before the reply (FAILED_PRECONDITION when it cannot be: the
client then sends the bytes), and a download that names an empty file of the client's
(`DownloadRequest.into`) is written there instead of streamed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias, cast

import grpc
from google.protobuf.message import DecodeError

from pxgrpc import blobstream, sharedmem, wire
from pxgrpc.addresses import is_loopback, join_url, split_url
from pxgrpc.security import certs
from pxgrpc.security.connection_file import ConnectionInfo
from pxgrpc.security.credentials import server_options
from pxgrpc.security.interceptor import TokenAuthInterceptor
from pxgrpc.security.tokens import TOKEN_METADATA_KEY, TOKEN_SCHEME

log = logging.getLogger(__name__)

#: An uploaded blob that no task has claimed after this many seconds is dropped.
UNCLAIMED_TTL = 120.0
#: A result blob nobody has downloaded after this many seconds is dropped (the engine goes on).
RESULT_TTL = 60.0
#: How often expired blobs are looked for.
SWEEP_INTERVAL = 5.0

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
#: The handler of `EngineData.Tasks` (`directwork.DirectWork.Tasks`).
TasksHandler: TypeAlias = Callable[
    [AsyncIterator[wire.pb.DirectTasks], Context], AsyncIterator[wire.pb.DirectEvents]
]


@dataclass
class _Offer:
    """A result blob waiting for its download; `done` resolves when it is over (or expired)."""

    blob: blobstream.OutgoingBlob
    done: concurrent.futures.Future[None]
    expires: float


class DataCertificate:
    """The TLS side of a data endpoint: a key made here, the request the controller signs
    (`csr_pem`), and server credentials that switch to the signed certificate once it comes.

    The port must be known before registering (it is in `data_url`), but the certificate comes
    back from the registration: until `install`, the server holds a throwaway certificate no
    client trusts (and no client knows the address yet).
    """

    def __init__(self, host: str, client_ca_pem: bytes | None) -> None:
        self.csr_pem, self._key_pem = certs.make_csr(host)
        self._client_ca = client_ca_pem
        placeholder = certs.make_server_cert(certs.make_ca("pxgrpc placeholder"), [host], days=1)
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self._pending_lock = threading.Lock()  # gRPC fetches from its own threads
        self.credentials = grpc.dynamic_ssl_server_credentials(
            self._configuration(placeholder.cert_pem, placeholder.key_pem),
            # (gRPC documents None as "no change"; its stubs do not say so)
            cast("Callable[[], grpc.ServerCertificateConfiguration]", self._fetch),
            require_client_authentication=client_ca_pem is not None,
        )

    def install(self, cert_pem: bytes) -> None:
        """Serve with `cert_pem` (the controller's signature on our key) from the next handshake."""
        configuration = self._configuration(cert_pem, self._key_pem)
        with self._pending_lock:
            self._pending = configuration

    def _configuration(self, cert_pem: bytes, key_pem: bytes) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(key_pem, cert_pem)], root_certificates=self._client_ca
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # gRPC asks before each handshake; None keeps the current configuration.
        with self._pending_lock:
            pending, self._pending = self._pending, None
        return pending


class DataEndpoint:
    """Serves `pxgrpc.v1.EngineData` to clients that hold `token` (the client token), or, for
    an engine that does not hold it, a token whose SHA-256 the controller gave at registration
    (`accept_token_sha256`)."""

    def __init__(self, token: str = "", tasks: TasksHandler | None = None) -> None:
        prefix = f"/{wire.ENGINE_DATA_SERVICE}/"
        self._auth = TokenAuthInterceptor({prefix: {token}}, token_sha256={prefix: set()})
        self._received: dict[str, tuple[blobstream.IncomingBlob, float]] = {}
        self._offers: dict[str, _Offer] = {}
        self._lock = threading.Lock()  # offers come from the main thread
        self._server: grpc.aio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.url = ""
        #: This host for shared memory (`RegisterRequest.host_key`), "" when sharing is off.
        self.host_key = sharedmem.host_key()
        #: The TLS certificate machinery, when the endpoint speaks TLS.
        self.tls: DataCertificate | None = None
        self._tasks = tasks

    async def start(self, host: str = "127.0.0.1", tls: DataCertificate | None = None) -> str:
        """Listen on an ephemeral port of `host` (with TLS when given `tls`); return the
        "host:port" to advertise."""
        server = grpc.aio.server(options=server_options(), interceptors=[self._auth])
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            "Upload": grpc.stream_unary_rpc_method_handler(
                self.Upload, response_serializer=wire.pb.UploadReply.SerializeToString
            ),
            "Download": grpc.unary_stream_rpc_method_handler(self.Download),
        }
        if self._tasks is not None:
            handlers["Tasks"] = grpc.stream_stream_rpc_method_handler(
                self._tasks,
                request_deserializer=wire.pb.DirectTasks.FromString,
                response_serializer=wire.pb.DirectEvents.SerializeToString,
            )
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(wire.ENGINE_DATA_SERVICE, handlers)]
        )
        address = join_url(host, 0)
        if tls is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, tls.credentials)
        self.tls = tls
        await server.start()
        self._server = server
        self._sweeper = asyncio.create_task(self._sweep())
        self.url = join_url(host, port)
        return self.url

    def accept_token_sha256(self, digest: bytes) -> None:
        """Also accept clients whose token has this SHA-256 (from `RegisterReply`)."""
        self._auth.accept_token_sha256(f"/{wire.ENGINE_DATA_SERVICE}/", digest)

    def check_token(self, token: str) -> str | None:
        """None when `token` may use this endpoint's services (a task lane's `LaneHello`), else
        why not."""
        method = f"/{wire.ENGINE_DATA_SERVICE}/Tasks"
        return self._auth.check(method, [(TOKEN_METADATA_KEY, f"{TOKEN_SCHEME} {token}")])

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            await self._server.stop(0.5)
        with self._lock:
            offers, self._offers = self._offers, {}
        for offer in offers.values():
            _settle(offer.done)

    # --- what the engine asks -----------------------------------------------------------------

    def take(self, blob_id: str) -> blobstream.IncomingBlob | None:
        """The blob a client uploaded for a task (once), or None if it did not come here."""
        entry = self._received.pop(blob_id, None)
        return entry[0] if entry is not None else None

    def offer(self, blob: blobstream.OutgoingBlob) -> concurrent.futures.Future[None]:
        """Keep a result blob for its client (from any thread); the future resolves once it has
        been downloaded, or dropped after RESULT_TTL seconds."""
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._lock:
            self._offers[blob.blob_id] = _Offer(blob, done, time.monotonic() + RESULT_TTL)
        return done

    # --- the service ----------------------------------------------------------------------------

    async def Upload(self, requests: AsyncIterator[bytes], context: Context) -> wire.pb.UploadReply:
        try:
            blob = await blobstream.receive(requests, on_shared=self._map_shared)
        except wire.DecodingError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise
        except sharedmem.SharedBlobUnusable as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{exc}: send the bytes")
            raise
        self._received[blob.blob_id] = (blob, time.monotonic())
        return wire.pb.UploadReply(blob_id=blob.blob_id, size=blob.size)

    async def Download(self, raw: bytes, context: Context) -> AsyncIterator[bytes]:
        try:
            request = wire.pb.DownloadRequest.FromString(raw)
        except DecodeError as exc:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"DownloadRequest: not a valid message ({exc})"
            )
            raise
        with self._lock:
            offer = self._offers.pop(request.blob_id, None)
        if offer is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"blob {request.blob_id!r} is not a result waiting here (or was fetched)",
            )
            raise AssertionError("unreachable: abort raises")
        try:
            if await self._write_shared(request, offer.blob):
                header = wire.pb.BlobHeader(blob_id=request.blob_id, size=offer.blob.size)
                header.shared.CopyFrom(request.into)
                yield wire.pb.BlobChunk(header=header).SerializeToString()
                return
            for chunk in offer.blob.raw_messages():
                yield chunk
        finally:
            _settle(offer.done)

    def _map_shared(self, blob_id: str, header: wire.pb.BlobHeader) -> blobstream.IncomingBlob:
        """An upload that names a shared file of the client's: map it (the client closes it
        once we reply)."""
        if not self.host_key or header.shared.path == "":
            raise sharedmem.SharedBlobUnusable(f"blob {blob_id}: this engine shares no memory")
        return sharedmem.map_blob(blob_id, header)

    async def _write_shared(self, request: wire.pb.DownloadRequest, blob: blobstream.OutgoingBlob) -> bool:
        """Write a result blob into the file the client gave, when it is on this host and the
        blob large enough; False when the bytes are to be streamed instead."""
        if not request.HasField("into") or not self.host_key or request.host_key != self.host_key:
            return False
        if blob.size < sharedmem.MIN_POINT_TO_POINT:
            return False
        try:
            await asyncio.to_thread(sharedmem.write_into, request.into, blob.parts, request.blob_id)
        except sharedmem.SharedBlobUnusable as exc:
            log.info("%s: streaming the bytes", exc)
            return False
        return True

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = time.monotonic()
            for blob_id, (blob, arrived) in list(self._received.items()):
                if now - arrived > UNCLAIMED_TTL:
                    log.info("dropping blob %s (%d bytes): no task claimed it", blob_id, blob.size)
                    self._received.pop(blob_id, None)
            with self._lock:
                expired = [k for k, o in self._offers.items() if o.expires < now]
                dropped = [self._offers.pop(k) for k in expired]
            for offer in dropped:
                log.warning("dropping result blob %s: its client did not download it", offer.blob.blob_id)
                _settle(offer.done)


def _settle(done: concurrent.futures.Future[None]) -> None:
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        done.set_result(None)


def offers_data(info: ConnectionInfo) -> bool:
    """Serve a data endpoint? Only where clients can use it safely: a controller with TLS and a
    CA in the connection file (the endpoint then speaks TLS too, with a certificate the
    controller signs; see `registration.use_data_certificate`), or, for engines started
    with the client token, a controller on loopback without TLS (plain TCP on 127.0.0.1).
    Engines with the engine token only (the engine-only file) check clients' tokens against
    the SHA-256 the controller sends, and get a certificate only for the address they
    register from, never the controller's: next to the controller they use its relay.
    `PXGRPC_DATA_ENDPOINT=off` turns it off."""
    if not blobstream.direct_data_enabled():
        return False
    try:
        host, _ = split_url(info.url)
    except ValueError:
        return False
    if info.uses_tls:
        return bool(info.tls_ca)
    return bool(info.token) and is_loopback(host)


async def data_address(info: ConnectionInfo, data_host: str) -> str:
    """Where the data endpoint listens and is reached: `data_host` when set; next to a
    loopback controller 127.0.0.1; else this host's address on the route to the controller
    (the address the controller's network knows it by)."""
    host, port = split_url(info.url)
    if is_loopback(host):
        return data_host if data_host and info.uses_tls else "127.0.0.1"
    if data_host:
        return data_host
    return await asyncio.to_thread(local_address_towards, host, port)


async def start_data_endpoint(
    info: ConnectionInfo, data_host: str, tasks: TasksHandler | None = None
) -> DataEndpoint:
    """Start this engine's data endpoint where clients can reach it (TLS when the cluster has
    it), serving `EngineData.Tasks` with `tasks` when given."""
    host = await data_address(info, data_host)
    tls = None
    if info.uses_tls:
        assert info.tls_ca is not None  # (see offers_data)
        mutual = info.client_cert() is not None
        tls = DataCertificate(host, info.tls_ca.encode() if mutual else None)
    data = DataEndpoint(info.token, tasks)
    await data.start(host, tls)
    return data


def local_address_towards(host: str, port: int) -> str:
    """This host's IP address on the route to `host` (no packet is sent: a UDP socket is only
    connected, which picks the source address)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, kind, proto) as probe:
        probe.connect(address)
        local: str = probe.getsockname()[0]
    return local.split("%", 1)[0]
