"""gRPC credentials and options: TLS for servers and channels, message sizes and keepalive.

Turns a :class:`pxgrpc.security.certs.CertKey` into ``grpc`` server or channel credentials, and
gives the options every pxgrpc server and channel shares.
"""

from __future__ import annotations

import grpc

from pxgrpc.security.certs import CertKey
from pxgrpc.security.errors import SecurityError

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


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
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
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
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_ping_strikes", 0),
    ]
