"""Standard gRPC services on the controller: health checking and server reflection.

They let operators probe a controller with stock tools, no pxgrpc code needed::

    grpc_health_probe -addr 127.0.0.1:PORT                   # Kubernetes-style liveness probe
    grpcurl -H "authorization: bearer TOKEN" -plaintext 127.0.0.1:PORT list

Authentication (enforced by the controller's `TokenAuthInterceptor` from `pxgrpc.security.interceptor`,
see `auth_rules`):

* Health (`grpc.health.v1.Health`) needs no token while the controller listens on loopback only:
  only processes of this host can reach it, and local supervisors and probes should not need a
  secret to ask "are you up?". On any other address it takes the client or the engine token,
  like everything else there (deny by default: an open port answering strangers tells a scanner
  what runs there).
* Reflection (`grpc.reflection.*.ServerReflection`) always takes the client token: it describes
  the whole API for tools that drive it, and only clients drive the API.

Health reports SERVING for the whole server ("") and for `pxgrpc.v1.Controller` and
`pxgrpc.v1.Engine` from start until the controller stops; then NOT_SERVING.
"""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pxgrpc import wire

log = logging.getLogger(__name__)

HEALTH_SERVICE = health.SERVICE_NAME
REFLECTION_SERVICE = reflection.SERVICE_NAME
HEALTH_PREFIX = f"/{HEALTH_SERVICE}/"
#: grpcio-reflection serves v1alpha; v1 is listed too so the rule holds if it ever serves both.
REFLECTION_PREFIXES = (f"/{REFLECTION_SERVICE}/", "/grpc.reflection.v1.ServerReflection/")
#: What health reports on, besides the whole server ("").
SERVICES = (wire.CONTROLLER_SERVICE, wire.ENGINE_SERVICE)


def auth_rules(client_token: str, engine_token: str) -> dict[str, set[str]]:
    """Token rules for the standard services, to merge into the controller's interceptor rules."""
    rules = {HEALTH_PREFIX: {client_token, engine_token}}
    for prefix in REFLECTION_PREFIXES:
        rules[prefix] = {client_token}
    return rules


def open_prefixes(loopback: bool) -> tuple[str, ...]:
    """Methods callable without a token: health, when only this host can reach the server."""
    return (HEALTH_PREFIX,) if loopback else ()


class StandardServices:
    """The health and reflection servicers of one grpc.aio server."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection((*SERVICES, HEALTH_SERVICE, REFLECTION_SERVICE), server)

    async def serving(self) -> None:
        """Report SERVING (call once the server has started)."""
        for service in ("", *SERVICES):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    async def stopping(self) -> None:
        """Report NOT_SERVING to every check and watcher (call before the server stops)."""
        await self.health.enter_graceful_shutdown()
        log.debug("health: NOT_SERVING")
