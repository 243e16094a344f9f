"""Starting and running a controller: bind, secure, publish the connection file, watch engines."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
import socket
from dataclasses import dataclass, field

import grpc

from pxgrpc import security
from pxgrpc.controller.service import ControllerState, generic_handlers
from pxgrpc.security import CertKey, ConnectionInfo

log = logging.getLogger(__name__)


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
    heartbeat_timeout: float = 6.0
    prefetch: int = 4
    extra_hosts: list[str] = field(default_factory=list)


class Controller:
    """A running controller. Use `await Controller(config).start()`, then `await wait_stopped()`."""

    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        self.state = ControllerState(heartbeat_interval=config.heartbeat_interval, prefetch=config.prefetch)
        self.token = config.token or security.new_token()
        self.engine_token = config.engine_token or security.new_token()
        self.connection_file = config.connection_file or security.default_connection_file(config.cluster_id)
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.info: ConnectionInfo | None = None
        self._monitor: asyncio.Task[None] | None = None

    def _check_bind(self) -> None:
        if self.config.tls == "off" and not security.is_loopback(self.config.ip):
            if not self.config.insecure:
                raise security.SecurityError(
                    f"refusing to listen on {self.config.ip!r} without TLS: anyone who reaches the port could run "
                    "code on every engine. Add --tls auto (or --tls-cert/--tls-key), or --insecure to accept the risk"
                )
            log.warning("listening on %s WITHOUT TLS (--insecure): tokens and data travel in clear", self.config.ip)

    def _tls_material(self) -> tuple[grpc.ServerCredentials | None, str | None]:
        cfg = self.config
        if cfg.tls == "off":
            return None, None
        if cfg.tls == "auto":
            ca = security.make_ca()
            hosts = [h for h in (cfg.ip, cfg.location, *cfg.extra_hosts) if h and h not in ("0.0.0.0", "::")]
            server = security.make_server_cert(ca, hosts)
            client_ca = ca.cert_pem if cfg.tls_client_auth else None
            self._ca = ca
            creds = security.server_credentials(server, client_ca, cfg.tls_client_auth)
            return creds, ca.cert_pem.decode()
        if cfg.tls_cert is None or cfg.tls_key is None:
            raise security.SecurityError("TLS with your own certificate needs both --tls-cert and --tls-key")
        cert = CertKey(cfg.tls_cert.read_bytes(), cfg.tls_key.read_bytes())
        ca_pem = cfg.tls_ca.read_bytes() if cfg.tls_ca else None
        creds = security.server_credentials(cert, ca_pem if cfg.tls_client_auth else None, cfg.tls_client_auth)
        return creds, ca_pem.decode() if ca_pem else None

    async def start(self) -> ConnectionInfo:
        """Bind, start serving and write the connection file."""
        self._check_bind()
        creds, ca_pem = self._tls_material()
        interceptor = security.TokenAuthInterceptor(
            {
                "/pxgrpc.v1.Controller/": {self.token},
                "/pxgrpc.v1.Engine/": {self.engine_token},
            },
            open_prefixes=("/grpc.health.v1.Health/",) if security.is_loopback(self.config.ip) else (),
        )
        server = grpc.aio.server(options=security.server_options(), interceptors=[interceptor])
        server.add_generic_rpc_handlers(generic_handlers(self.state))
        address = security.join_url(self.config.ip, self.config.port)
        if creds is None:
            self.port = server.add_insecure_port(address)
        else:
            self.port = server.add_secure_port(address, creds)
        await server.start()
        self.server = server
        self.info = ConnectionInfo(
            url=security.join_url(self._location(), self.port),
            token=self.token,
            engine_token=self.engine_token,
            tls_ca=ca_pem,
            cluster_id=self.config.cluster_id,
            controller_pid=os.getpid(),
        )
        security.write_connection_file(self.connection_file, self.info)
        self._monitor = asyncio.create_task(self._watch_engines())
        log.info("controller listening on %s (connection file %s)", self.info.url, self.connection_file)
        return self.info

    def _location(self) -> str:
        if self.config.location:
            return self.config.location
        if self.config.ip in ("0.0.0.0", "::", ""):
            return socket.gethostname()
        return self.config.ip

    async def _watch_engines(self) -> None:
        """Declare silent engines dead; forget registrations that never connected."""
        state = self.state
        while True:
            await asyncio.sleep(min(1.0, state.heartbeat_interval))
            for engine in state.registry.silent_engines(self.config.heartbeat_timeout):
                log.warning("engine %d sent nothing for %.0f s: declaring it dead", engine.engine_id,
                            self.config.heartbeat_timeout)
                state.router.engine_lost(engine, f"stopped answering (no heartbeat for {self.config.heartbeat_timeout:.0f} s)")
            for engine in state.registry.stale_registrations(30.0):
                state.registry.remove(engine)
            state.blobs.drop_orphans()

    async def wait_stopped(self) -> None:
        """Serve until a Shutdown(controller=true) call or stop()."""
        await self.state.stopping.wait()
        await self.stop()

    async def stop(self, grace: float = 1.0) -> None:
        for engine in self.state.registry.live():
            engine.send_shutdown()
        if self._monitor is not None:
            self._monitor.cancel()
        if self.server is not None:
            await asyncio.sleep(0.05)  # let the shutdown commands go out
            await self.server.stop(grace)
            self.server = None
        with contextlib.suppress(OSError, security.SecurityError):
            current = security.read_connection_file(self.connection_file)
            if current.controller_pid == os.getpid():
                self.connection_file.unlink()
