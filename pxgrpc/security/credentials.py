"""gRPC credentials and options: TLS for servers and channels, message sizes and keepalive.

Turns a :class:`pxgrpc.security.certs.CertKey` into ``grpc`` server or channel credentials, and
gives the options every pxgrpc server and channel shares.
"""

from __future__ import annotations

import grpc

from pxgrpc.security.certs import CertKey
from pxgrpc.security.errors import SecurityError

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Keepalive, the same on both sides (clients and engines ping; the controller pings back and
#: accepts their pings): a ping after 10 s without traffic, and a connection whose ping goes
#: unanswered for 10 s more is dropped. A link down for a few seconds is ridden out (TCP
#: retransmits); one that stays down is noticed within about 20 s on an idle connection, and
#: sooner on a busy one (engines send a heartbeat every second; the controller declares an
#: engine dead after `--heartbeat-timeout`, 10 s by default).
KEEPALIVE_TIME_MS = 10_000
KEEPALIVE_TIMEOUT_MS = 10_000


def server_credentials(
    cert: CertKey, client_ca_pem: bytes | None = None, require_client_auth: bool = False
) -> grpc.ServerCredentials:
    """Build TLS credentials for a server; with ``require_client_auth`` clients need a cert
    signed by ``client_ca_pem`` (mutual TLS)."""
    if require_client_auth and not client_ca_pem:
        raise SecurityError("mutual TLS needs the CA that signs client certificates: pass client_ca_pem")
    return grpc.ssl_server_credentials(
        [(cert.key_pem, cert.cert_pem)],
        root_certificates=client_ca_pem,
        require_client_auth=require_client_auth,
    )


def channel_credentials(ca_pem: bytes | None, client: CertKey | None = None) -> grpc.ChannelCredentials:
    """Build TLS credentials for a channel trusting ``ca_pem`` (None: the system roots),
    presenting ``client``'s certificate when given (mutual TLS)."""
    return grpc.ssl_channel_credentials(
        root_certificates=ca_pem,
        private_key=client.key_pem if client else None,
        certificate_chain=client.cert_pem if client else None,
    )


def channel_options(info_server_name: str | None) -> list[tuple[str, object]]:
    """Channel options for pxgrpc: 64 MiB messages, keepalive for long-lived streams and,
    when given, the TLS server name to check instead of the dialed host."""
    options: list[tuple[str, object]] = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # A lost controller is redialed within a couple of seconds of coming back (gRPC's own
        # default backoff grows to two minutes). Not `min_reconnect_backoff_ms`: gRPC takes it
        # as the time one connection attempt may take (20 s by default).
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]
    if info_server_name:
        options.append(("grpc.ssl_target_name_override", info_server_name))
    return options


def server_options() -> list[tuple[str, object]]:
    """Server options matching :func:`channel_options`: 64 MiB messages, and accept the
    clients' keepalive pings (otherwise gRPC closes idle streams with 'too_many_pings')."""
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_ping_strikes", 0),
    ]
