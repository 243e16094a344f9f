"""Starting and running a controller: bind, secure, publish the connection file, watch engines."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import pathlib
import socket
from dataclasses import dataclass, field
from typing import Any

import grpc
import psutil
from google.protobuf.message import Message

from pxgrpc import wire
from pxgrpc.addresses import is_loopback, join_url, normal_host, split_url
from pxgrpc.controller import probes
from pxgrpc.controller.controller_service import ControllerService
from pxgrpc.controller.engine_service import EngineService
from pxgrpc.controller.restore import AutoTls, EngineIds, previous_controller, state_file, tls_file
from pxgrpc.controller.state import ControllerState
from pxgrpc.security import certfiles, certs
from pxgrpc.security.certs import CertKey
from pxgrpc.security.connection_file import (
    ConnectionInfo,
    default_connection_file,
    engine_connection_file,
    read_connection_file,
    write_connection_file,
)
from pxgrpc.security.credentials import server_credentials, server_options
from pxgrpc.security.errors import SecurityError
from pxgrpc.security.interceptor import TokenAuthInterceptor
from pxgrpc.security.tokens import new_token

log = logging.getLogger(__name__)

_WILDCARDS = ("0.0.0.0", "::", "")


def _local_addresses() -> list[str]:
    """The IP addresses of this host's interfaces (for the SANs of an auto certificate)."""
    addresses: list[str] = []
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family in (socket.AF_INET, socket.AF_INET6):
                addresses.append(entry.address.split("%", 1)[0])
    return addresses


@dataclass
class ControllerConfig:
    """How to run a controller (the `pxgrpc-controller` flags)."""

    ip: str = "127.0.0.1"
    port: int = 0
    #: Host name or address written into the connection file for others to dial (default: ip,
    #: or this host's name when bound to all interfaces).
    location: str = ""
    connection_file: pathlib.Path | None = None
    cluster_id: str = ""
    token: str = ""
    engine_token: str = ""
    #: "off", "auto" (own CA + certificate), or "files" (tls_cert/tls_key[/tls_ca]).
    tls: str = "off"
    tls_cert: pathlib.Path | None = None
    tls_key: pathlib.Path | None = None
    tls_ca: pathlib.Path | None = None
    tls_client_auth: bool = False
    insecure: bool = False
    heartbeat_interval: float = 1.0
    #: Engines silent for this many seconds are declared dead.
    heartbeat_timeout: float = 10.0
    prefetch: int = 4
    extra_hosts: list[str] = field(default_factory=list)
    #: Come back as the controller of `connection_file` that died: same port, tokens, certificates
    #: and engine ids (see `restore`).
    restore: bool = False
    #: With `restore`: seconds to wait for the engines known before before failing the tasks
    #: that resumed clients wait for and no engine holds.
    restore_grace: float = 30.0


class Controller:
    """A running controller. Use `await Controller(config).start()`, then `await wait_stopped()`."""

    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        self.token = config.token or new_token()
        self.state = ControllerState(
            heartbeat_interval=config.heartbeat_interval,
            prefetch=config.prefetch,
            tls=config.tls != "off",
            client_token=self.token,
        )
        self.engine_token = config.engine_token or new_token()
        self.connection_file = config.connection_file or default_connection_file(config.cluster_id)
        self.engine_connection_file = engine_connection_file(self.connection_file)
        self.tls_file, self.state_file = tls_file(self.connection_file), state_file(self.connection_file)
        self._bind_port = config.port
        if config.restore:
            self._restore()
        self._save_pending = False
        self.state.registry.watchers.add(self._save_engine_ids_soon)
        self._client_certs: dict[str, CertKey] = {}
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.info: ConnectionInfo | None = None
        self._monitor: asyncio.Task[None] | None = None
        self.standard_services: probes.StandardServices | None = None

    def _restore(self) -> None:
        """Take the port, tokens and engine ids of the controller that died (`--restore`)."""
        previous = previous_controller(self.connection_file)
        self.token = self.config.token or previous.token
        self.state.client_token = self.token
        self.engine_token = self.config.engine_token or previous.engine_token
        self._bind_port = self.config.port or split_url(previous.url)[1]
        ids = EngineIds.load(self.state_file)
        self.state.registry.restore(ids.next_id)
        self.state.router.sessions.expect(ids.live, self.config.restore_grace)
        log.info("restoring the controller of %s (engines %s expected back)", self.connection_file, ids.live)

    def _save_engine_ids_soon(self) -> None:
        """Engines came or went: save their ids shortly (once for a burst of registrations)."""
        if not self._save_pending:
            self._save_pending = True
            asyncio.get_running_loop().call_later(0.05, self._save_engine_ids)

    def _save_engine_ids(self) -> None:
        self._save_pending = False
        if self.server is None and self.info is not None:
            return  # stopped: a clean stop leaves nothing to restore
        registry = self.state.registry
        # (while engines of a restore are still expected, they count: this controller may die too)
        live = sorted({e.engine_id for e in registry.live()} | self.state.router.sessions.expected_engines)
        with contextlib.suppress(OSError):
            EngineIds(live, registry.next_id).save(self.state_file)

    def _check_bind(self) -> None:
        ip = self.config.ip
        if self.config.tls == "off" and not is_loopback(ip):
            if not self.config.insecure:
                raise SecurityError(
                    f"refusing to listen on {ip!r} without TLS: anyone who reaches the port could run "
                    "code on every engine. Add --tls auto (or --tls-cert/--tls-key), "
                    "or --insecure to accept the risk"
                )
            log.warning("listening on %s WITHOUT TLS (--insecure): tokens and data travel in clear", ip)

    def _tls_material(self) -> tuple[grpc.ServerCredentials | None, str | None]:
        """Server credentials and the CA PEM to publish (None, None without TLS)."""
        cfg = self.config
        if cfg.tls == "off":
            if cfg.tls_client_auth:
                raise SecurityError(
                    "--tls-client-auth needs TLS: add --tls auto, or --tls-cert/--tls-key/--tls-ca"
                )
            return None, None
        if cfg.tls == "auto":
            return self._auto_tls()
        if cfg.tls_cert is None or cfg.tls_key is None:
            raise SecurityError("TLS with your own certificate needs both --tls-cert and --tls-key")
        cert = certfiles.load_cert_pair(cfg.tls_cert, cfg.tls_key, "--tls-cert")
        ca_pem = certfiles.read_pem(cfg.tls_ca, "--tls-ca") if cfg.tls_ca else None
        if cfg.tls_client_auth and ca_pem is None:
            raise SecurityError(
                "--tls-client-auth needs --tls-ca: the CA that signs the certificates of engines and clients"
            )
        client_ca = ca_pem if cfg.tls_client_auth else None
        creds = server_credentials(cert, client_ca, cfg.tls_client_auth)
        return creds, ca_pem.decode() if ca_pem else None

    def _auto_tls(self) -> tuple[grpc.ServerCredentials, str]:
        """--tls auto: a fresh CA and server certificate; with client auth, also the client
        certificates that go into the connection files (one for clients, one for engines)."""
        cfg = self.config
        if cfg.restore and self.tls_file.exists():
            made = AutoTls.load(self.tls_file)
        else:
            stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
            ca = certs.make_ca(f"pxgrpc CA {socket.gethostname()} {stamp}")
            made = AutoTls(ca, certs.make_server_cert(ca, self._certificate_hosts()))
            if cfg.tls_client_auth:
                made.clients = {
                    "client": certs.make_client_cert(ca, "pxgrpc client"),
                    "engine": certs.make_client_cert(ca, "pxgrpc engine"),
                }
            made.save(self.tls_file)  # mode 0600: for `--restore`
        ca, server = made.ca, made.server
        self.state.data_ca = ca  # signs the certificates of engines' data endpoints
        self.state.own_hosts = self._own_hosts()
        if cfg.tls_client_auth:
            self._client_certs = made.clients
        client_ca = ca.cert_pem if cfg.tls_client_auth else None
        return server_credentials(server, client_ca, cfg.tls_client_auth), ca.cert_pem.decode()

    def _certificate_hosts(self) -> list[str]:
        """Names the auto certificate is valid for: the bind address, --location, --tls-san, and
        every local address when bound to all interfaces."""
        cfg = self.config
        hosts = [h for h in (cfg.ip, cfg.location, *cfg.extra_hosts) if h and h not in _WILDCARDS]
        if cfg.ip in _WILDCARDS:
            hosts += _local_addresses()
        return hosts

    def _own_hosts(self) -> frozenset[str]:
        """This controller's addresses and names: its certificate's hosts, its bind address and
        (whatever it is bound to) every local address. No engine without the client token gets
        a data endpoint certificate for one of them."""
        hosts = [*self._certificate_hosts(), self.config.ip, *_local_addresses()]
        return frozenset(normal_host(h) for h in hosts if h and h not in _WILDCARDS)

    async def start(self) -> ConnectionInfo:
        """Bind, start serving and write the connection file."""
        self._check_bind()
        creds, ca_pem = self._tls_material()
        interceptor = TokenAuthInterceptor(
            {
                "/pxgrpc.v1.Controller/": {self.token},
                "/pxgrpc.v1.Engine/": {self.engine_token},
                **probes.auth_rules(self.token, self.engine_token),
            },
            open_prefixes=probes.open_prefixes(is_loopback(self.config.ip)),
        )
        server = grpc.aio.server(options=server_options(), interceptors=[interceptor])
        server.add_generic_rpc_handlers(generic_handlers(self.state))
        self.standard_services = services = probes.StandardServices(server)
        address = join_url(self.config.ip, self._bind_port)
        if creds is None:
            self.port = server.add_insecure_port(address)
        else:
            self.port = server.add_secure_port(address, creds)
        await server.start()
        await services.serving()
        self.server = server
        self.info = ConnectionInfo(
            url=join_url(self._location(), self.port),
            token=self.token,
            engine_token=self.engine_token,
            tls_ca=ca_pem,
            cluster_id=self.config.cluster_id,
            controller_pid=os.getpid(),
            tls=creds is not None,
        )
        self._write_connection_files(self.info)
        self.state.router.sessions.where = f" at {self.info.url}"
        self._save_engine_ids()
        self._monitor = asyncio.create_task(self._watch_engines())
        log.info("controller listening on %s (connection file %s)", self.info.url, self.connection_file)
        return self.info

    def _write_connection_files(self, info: ConnectionInfo) -> None:
        """Write the full connection file, and the engine-only one to copy to engine hosts."""
        client_cert, engine_cert = self._client_certs.get("client"), self._client_certs.get("engine")
        if client_cert is not None:
            info.tls_client_cert = client_cert.cert_pem.decode()
            info.tls_client_key = client_cert.key_pem.decode()
        write_connection_file(self.connection_file, info)
        for_engines = info.for_engines()
        if engine_cert is not None:
            for_engines.tls_client_cert = engine_cert.cert_pem.decode()
            for_engines.tls_client_key = engine_cert.key_pem.decode()
        write_connection_file(self.engine_connection_file, for_engines)

    def _location(self) -> str:
        if self.config.location:
            return self.config.location
        if self.config.ip in _WILDCARDS:
            return socket.gethostname()
        return self.config.ip

    async def _watch_engines(self) -> None:
        """Declare silent engines dead; forget registrations that never connected."""
        state = self.state
        while True:
            await asyncio.sleep(min(1.0, state.heartbeat_interval))
            for engine in state.registry.silent_engines(self.config.heartbeat_timeout):
                log.warning(
                    "engine %d sent nothing for %.0f s: declaring it dead",
                    engine.engine_id,
                    self.config.heartbeat_timeout,
                )
                state.router.engine_lost(
                    engine, f"stopped answering (no heartbeat for {self.config.heartbeat_timeout:.0f} s)"
                )
            state.router.settle()
            state.router.expire_parked()
            for engine in state.registry.stale_registrations(30.0):
                state.registry.remove(engine)
            state.blobs.drop_orphans()

    async def wait_stopped(self) -> None:
        """Serve until a Shutdown(controller=true) call or stop()."""
        await self.state.stopping.wait()
        await self.stop()

    async def stop(self, grace: float = 1.0) -> None:
        self.state.stopping.set()
        for wake in list(self.state.session_wakers):  # each client hears that we stop on purpose
            wake()
        for engine in self.state.registry.live():
            engine.send_shutdown()
        if self._monitor is not None:
            self._monitor.cancel()
        if self.server is not None:
            if self.standard_services is not None:
                await self.standard_services.stopping()
            await asyncio.sleep(0.05)  # let the shutdown commands go out
            await self.server.stop(grace)
            self.server = None
        self.state.registry.watchers.discard(self._save_engine_ids_soon)
        mine = False
        for path in (self.connection_file, self.engine_connection_file):
            with contextlib.suppress(OSError, SecurityError):
                current = read_connection_file(path)
                if current.controller_pid == os.getpid():
                    path.unlink()
                    mine = True
        if mine:  # a clean stop: nothing to restore
            for path in (self.tls_file, self.state_file):
                with contextlib.suppress(OSError):
                    path.unlink()


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
        "ReportExit": grpc.unary_unary_rpc_method_handler(engine.ReportExit, response_serializer=ser),
    }
    return [
        grpc.method_handlers_generic_handler(wire.CONTROLLER_SERVICE, c),
        grpc.method_handlers_generic_handler(wire.ENGINE_SERVICE, e),
    ]


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()
