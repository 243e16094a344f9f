"""How an engine registers with the controller: at start, and again under its old id after the
controller was lost; and the data endpoint certificate the controller signs in return."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import TYPE_CHECKING

import grpc

from pxgrpc import diagnose, versions, wire
from pxgrpc.security import certs

if TYPE_CHECKING:
    from pxgrpc.engine.connection import EngineConnection

log = logging.getLogger(__name__)

#: The longest pause between two attempts to reach a lost controller.
RECONNECT_BACKOFF_CAP = 2.0


def register_request(conn: EngineConnection, held_task_ids: list[str] | None) -> wire.pb.RegisterRequest:
    """What the engine tells about itself (`held_task_ids` when it registers again)."""
    mine = versions.engine_versions()
    request = wire.pb.RegisterRequest(
        hostname=socket.gethostname(),
        pid=os.getpid(),
        python_version=mine.python,
        protocol_version=mine.protocol,
        cloudpickle_version=mine.cloudpickle,
        data_url=conn.data.url if conn.data is not None else "",
        host_key=conn.data.host_key if conn.data is not None else "",
        lane_path=conn.lanes.path if conn.lanes is not None and conn.data is not None else "",
        supervised=conn.supervised,
    )
    if conn.requested_id is not None:
        request.requested_id = conn.requested_id
    if held_task_ids is not None:
        request.held_task_ids.extend(held_task_ids)
    if conn.data is not None and conn.data.tls is not None:
        request.data_csr_pem = conn.data.tls.csr_pem
        if conn.info.token:  # else the controller signs for the address we call from only
            request.data_csr_mac = certs.csr_mac(conn.data.tls.csr_pem, conn.info.token)
    return request


async def register(
    conn: EngineConnection, channel: grpc.aio.Channel, held_task_ids: list[str] | None = None
) -> wire.pb.RegisterReply:
    """Register with the controller. Retry while it cannot be reached (it may be starting)
    until `connect_timeout` (`reconnect_timeout` when it was lost: `held_task_ids` given);
    fail at once, with a diagnosis, on TLS or token problems."""
    rejoin = held_task_ids is not None
    register_call = channel.unary_unary(
        f"/{wire.ENGINE_SERVICE}/Register",
        request_serializer=wire.pb.RegisterRequest.SerializeToString,
        response_deserializer=wire.pb.RegisterReply.FromString,
    )
    request = register_request(conn, held_task_ids)
    target = diagnose.ConnectTarget.of(conn.info, role="engine")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (conn.reconnect_timeout if rejoin else conn.connect_timeout)
    delay, cap = 0.05, RECONNECT_BACKOFF_CAP if rejoin else 1.0
    retry_codes = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
    if rejoin:  # (our old registration, until the controller notices it is gone)
        retry_codes.add(grpc.StatusCode.ALREADY_EXISTS)
    while True:
        remaining = max(deadline - loop.time(), 0.5)
        try:
            reply: wire.pb.RegisterReply = await register_call(
                request, metadata=conn.metadata, timeout=remaining
            )
            return reply
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
        retry = loop.time() + delay < deadline
        if not retry or code not in retry_codes:
            break
        if not rejoin:  # (a controller we had goes on being worth waiting for)
            quick = diagnose.diagnose(code, details, target, probe=False)
            if not quick.retryable:
                break
        log.info("controller at %s not reachable yet (%s)", conn.info.url, diagnose.short(details))
        await asyncio.sleep(delay)
        delay = min(delay * 2, cap)
    if (
        conn.data is not None
        and not request.data_csr_mac
        and code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT)
        and details.startswith(("data_url:", "data_csr_pem:"))
    ):
        # Without the client token the controller only signs for the address it sees us
        # call from (not, say, a name set with --data-host): go on without an endpoint.
        log.warning("no data endpoint (%s): bulk data goes through the controller", details)
        data, conn.data = conn.data, None
        await data.stop()
        return await register(conn, channel, held_task_ids)
    found = await asyncio.to_thread(diagnose.diagnose, code, details, target)
    raise diagnose.ConnectFailure(found)


async def use_data_certificate(conn: EngineConnection, reply: wire.pb.RegisterReply) -> None:
    """Put the certificate the controller signed in place; without one a TLS endpoint is
    useless (clients could not trust it, and the controller does not publish it)."""
    if conn.data is None or conn.data.tls is None:
        return
    if reply.data_cert_pem and (conn.info.token or reply.client_token_sha256):
        conn.data.accept_token_sha256(reply.client_token_sha256)
        conn.data.tls.install(reply.data_cert_pem)
        log.info("data endpoint at %s (TLS)", conn.data.url)
        return
    log.info("the controller signs no data endpoint certificate: bulk data goes through it")
    data, conn.data = conn.data, None
    await data.stop()
