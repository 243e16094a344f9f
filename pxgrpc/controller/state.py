"""What the controller's handlers share: the engine registry, the router, the blob store."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc

from pxgrpc import wire
from pxgrpc.controller.blobs import BlobStore
from pxgrpc.controller.registry import EngineRegistry
from pxgrpc.controller.requests import Context
from pxgrpc.controller.router import TaskRouter
from pxgrpc.security.certs import CertKey


class ControllerState:
    """Everything the handlers share."""

    def __init__(
        self,
        heartbeat_interval: float = 1.0,
        prefetch: int = 4,
        *,
        tls: bool = False,
        data_ca: CertKey | None = None,
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
        #: One callback per open session stream: wakes it to tell its client the controller stops.
        self.session_wakers: set[Callable[[], None]] = set()

    async def resolve_targets(self, targets: wire.pb.Targets, context: Context) -> list[int]:
        """The engine ids a request targets, or abort the call naming the engine that is not live."""
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
