"""Which data endpoint certificate the controller signs for which engine (TLS clusters).

An engine serves bulk data to clients from its own endpoint; on a TLS cluster clients trust it
only with a certificate from the controller's CA. This is the policy deciding what gets signed.
"""

from __future__ import annotations

import hmac

import grpc

from pxgrpc import wire
from pxgrpc.addresses import normal_host, peer_address, split_url
from pxgrpc.controller.requests import Context
from pxgrpc.controller.state import ControllerState
from pxgrpc.security.certs import CertKey, CsrError, csr_mac, sign_server_csr


async def data_certificate(
    state: ControllerState, request: wire.pb.RegisterRequest, context: Context
) -> bytes:
    """On a TLS cluster, sign the engine's data endpoint certificate request, or (when we
    cannot) clear its `data_url`: clients could not trust the endpoint. Plaintext clusters
    take `data_url` as sent.

    Engines started from the full connection file prove they hold the client token
    (`data_csr_mac`) and get a certificate for the host they name. Engines with the engine
    token only send no MAC: they get one only for the address their call comes from, and
    only when that is none of the controller's own (`own_hosts`, loopback); elsewhere (an
    engine on the controller's host) they get none and their data goes through us."""
    if not state.tls:
        return b""
    ca = state.data_ca
    if ca is None or not request.data_url or not request.data_csr_pem:
        request.data_url = ""
        return b""
    try:
        host, _ = split_url(request.data_url)
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
        if peer.is_loopback or str(peer) in state.own_hosts:
            request.data_url = ""  # the controller's own address: never for an engine token
            return b""
        return await _sign_data_csr(ca, request.data_csr_pem, str(peer), context)
    expected = csr_mac(request.data_csr_pem, state.client_token)
    if not hmac.compare_digest(request.data_csr_mac, expected):
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            "data_csr_mac: not keyed with the client token; only engines started from the "
            "full connection file (controller.json) serve a data endpoint at any address",
        )
    return await _sign_data_csr(ca, request.data_csr_pem, host, context)


async def _sign_data_csr(ca: CertKey, csr_pem: bytes, host: str, context: Context) -> bytes:
    try:
        return sign_server_csr(ca, csr_pem, host)
    except CsrError as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"data_csr_pem: {exc}")
        raise  # unreachable: abort raises
