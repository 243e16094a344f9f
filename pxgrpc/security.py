"""Security helpers for pxgrpc: tokens, connection files, addresses and TLS credentials.

A controller publishes how to reach it in a *connection file* (JSON, mode 0600) that holds the
address, the client token, the engine token and, with TLS, the CA that signed its certificate.
Every RPC carries ``authorization: bearer <token>`` metadata (:func:`auth_metadata`), checked on
the server by :class:`pxgrpc.auth.TokenAuthInterceptor`. The certificates themselves are made in
:mod:`pxgrpc.certs`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import logging
import os
import pathlib
import secrets
import stat
import tempfile
from dataclasses import dataclass
from typing import Any

import grpc

from pxgrpc.certs import CertKey

logger = logging.getLogger(__name__)

ENV_DIR = "PXGRPC_DIR"
ENV_CONNECTION_FILE = "PXGRPC_CONNECTION_FILE"
TOKEN_METADATA_KEY = "authorization"
#: The scheme of the token in the metadata: ``authorization: bearer <token>``.
TOKEN_SCHEME = "bearer"

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_REQUIRED_KEYS = ("url", "token", "engine_token")


class SecurityError(Exception):
    """A security check failed; the message names the cause and how to fix it."""


# --------------------------------------------------------------------------- tokens and paths


def new_token() -> str:
    """Return a fresh random token (256 bits, URL-safe) for a client or engine.

    Never starts with '-', so that ``--token TOKEN`` on a command line is not read as an option.
    """
    while True:
        token = secrets.token_urlsafe(32)
        if not token.startswith("-"):
            return token


def pxgrpc_dir() -> pathlib.Path:
    """Return the directory holding pxgrpc state: ``$PXGRPC_DIR`` or ``~/.pxgrpc``."""
    override = os.environ.get(ENV_DIR)
    if override:
        return pathlib.Path(override).expanduser()
    return pathlib.Path.home() / ".pxgrpc"


def default_connection_file(cluster_id: str = "") -> pathlib.Path:
    """Return where the connection file of a cluster lives by default.

    ``$PXGRPC_CONNECTION_FILE`` wins for the default cluster; otherwise the file is
    ``controller.json`` (or ``controller-<cluster_id>.json``) in :func:`pxgrpc_dir`.
    """
    override = os.environ.get(ENV_CONNECTION_FILE)
    if override and not cluster_id:
        return pathlib.Path(override).expanduser()
    name = f"controller-{cluster_id}.json" if cluster_id else "controller.json"
    return pxgrpc_dir() / name


def engine_connection_file(connection_file: pathlib.Path) -> pathlib.Path:
    """Where the controller writes the engine-only copy of ``connection_file``.

    ``controller.json`` -> ``controller-engine.json``: the same address, engine token and TLS
    material, but no client token, so copying it to engine hosts does not hand over the cluster.
    """
    path = pathlib.Path(connection_file)
    return path.with_name(f"{path.stem}-engine{path.suffix or '.json'}")


# --------------------------------------------------------------------------- connection file


@dataclass
class ConnectionInfo:
    """Everything a client or engine needs to reach and authenticate to a controller.

    ``token`` drives the cluster (Controller service); ``engine_token`` only lets an engine join
    (Engine service). An engine-only connection file has an empty ``token``. With TLS, ``tls_ca``
    is the CA that signed the controller's certificate (None: the system's trusted roots), and
    ``tls_client_cert``/``tls_client_key`` are the PEM certificate and key to present when the
    controller requires client certificates (mutual TLS).
    """

    url: str
    token: str
    engine_token: str
    tls_ca: str | None = None
    tls_server_name: str | None = None
    cluster_id: str = ""
    controller_pid: int = 0
    tls: bool = False
    tls_client_cert: str | None = None
    tls_client_key: str | None = None

    @property
    def uses_tls(self) -> bool:
        """True when the controller speaks TLS (a CA is given, or the file says so)."""
        return self.tls or bool(self.tls_ca)

    def client_cert(self) -> CertKey | None:
        """The client certificate to present (mutual TLS), or None."""
        if self.tls_client_cert and self.tls_client_key:
            return CertKey(self.tls_client_cert.encode(), self.tls_client_key.encode())
        return None

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials for dialing this cluster (its CA, the client certificate when there
        is one), or None when it speaks plaintext."""
        if not self.uses_tls:
            return None
        return channel_credentials(self.tls_ca.encode() if self.tls_ca else None, self.client_cert())

    def for_engines(self) -> ConnectionInfo:
        """A copy without the client token, safe to hand to engine hosts."""
        return dataclasses.replace(self, token="")

    def to_json(self) -> str:
        """Serialize to the JSON text stored in a connection file."""
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, *, source: str = "<string>") -> ConnectionInfo:
        """Parse connection-file JSON; unknown keys are ignored.

        ``source`` (usually the file path) is named in error messages.
        """
        data = _load_json_object(text, source)
        for key in _REQUIRED_KEYS:
            if key not in data:
                raise SecurityError(
                    f"connection file {source} lacks the required key {key!r}; "
                    "restart the controller to rewrite it"
                )
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        for key, value in kwargs.items():
            _check_field_type(key, value, source)
        return cls(**kwargs)


def _load_json_object(text: str, source: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SecurityError(
            f"connection file {source} is not valid JSON ({exc}); restart the controller to rewrite it"
        ) from exc
    if not isinstance(data, dict):
        raise SecurityError(
            f"connection file {source} must hold a JSON object; restart the controller to rewrite it"
        )
    return data


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "url": (str,),
    "token": (str,),
    "engine_token": (str,),
    "tls_ca": (str, type(None)),
    "tls_server_name": (str, type(None)),
    "cluster_id": (str,),
    "controller_pid": (int,),
    "tls": (bool,),
    "tls_client_cert": (str, type(None)),
    "tls_client_key": (str, type(None)),
}


def _check_field_type(key: str, value: object, source: str) -> None:
    expected = _FIELD_TYPES[key]
    if (isinstance(value, bool) and bool not in expected) or not isinstance(value, expected):
        names = " or ".join("null" if t is type(None) else t.__name__ for t in expected)
        raise SecurityError(
            f"connection file {source}: key {key!r} must be {names}, got {type(value).__name__}; "
            "restart the controller to rewrite it"
        )


def write_connection_file(path: pathlib.Path, info: ConnectionInfo) -> None:
    """Write ``info`` to ``path`` atomically, readable by the owner only (mode 0600).

    Missing parent directories are created with mode 0700, and an existing pxgrpc directory
    containing the file is tightened to 0700.
    """
    path = pathlib.Path(path)
    _make_private_dirs(path.parent)
    _tighten_pxgrpc_dir(path.parent)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(info.to_json())
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_name, 0o600)
        os.replace(tmp_name, path)
    except BaseException:
        _unlink_quietly(tmp_name)
        raise
    logger.debug("wrote connection file %s", path)


def _make_private_dirs(directory: pathlib.Path) -> None:
    missing: list[pathlib.Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    for new_dir in reversed(missing):
        new_dir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(new_dir, 0o700)


def _tighten_pxgrpc_dir(directory: pathlib.Path) -> None:
    base = pxgrpc_dir()
    if not base.is_dir():
        return
    resolved_dir, resolved_base = directory.resolve(), base.resolve()
    inside = resolved_dir == resolved_base or resolved_base in resolved_dir.parents
    if inside and stat.S_IMODE(resolved_base.stat().st_mode) != 0o700:
        os.chmod(resolved_base, 0o700)
        logger.info("tightened %s to mode 0700", resolved_base)


def _unlink_quietly(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name)


def read_connection_file(path: pathlib.Path | None = None) -> ConnectionInfo:
    """Read the connection file of a controller (default: :func:`default_connection_file`).

    Refuses files that group or others can access, since they hold the cluster token.
    """
    path = default_connection_file() if path is None else pathlib.Path(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise SecurityError(
            f"no controller found at {path}: start one with `pxgrpc cluster start -n 4` "
            "or `pxgrpc-controller`, or pass the path of its connection file"
        ) from None
    with os.fdopen(fd, "r", encoding="utf-8") as fh:
        _check_private_mode(path, os.fstat(fh.fileno()).st_mode)
        text = fh.read()
    return ConnectionInfo.from_json(text, source=str(path))


def _check_private_mode(path: pathlib.Path, mode: int) -> None:
    if os.name == "nt":
        return
    if mode & 0o077:
        raise SecurityError(
            f"connection file {path} is accessible by other users "
            f"(mode {stat.S_IMODE(mode):04o}) and it holds the cluster token: "
            f"run `chmod 600 {path}`"
        )


# --------------------------------------------------------------------------- addresses


def is_loopback(host: str) -> bool:
    """Tell whether ``host`` only reaches this machine (127.0.0.0/8, ::1, localhost, unix:).

    The wildcard addresses ``""``, ``0.0.0.0`` and ``::`` are *not* loopback.
    """
    if host.startswith(("unix:", "unix-abstract:")):
        return True
    name = host.strip()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name.lower().rstrip(".") == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def split_url(url: str) -> tuple[str, int]:
    """Split ``host:port`` (or ``[v6]:port``) into host and port.

    Brackets are removed from IPv6 hosts. Unix socket URLs come back whole with port 0.
    Raises :class:`ValueError` for an address without a valid port.
    """
    if url.startswith(("unix:", "unix-abstract:")):
        return url, 0
    if url.startswith("["):
        host, sep, port_text = url[1:].partition("]:")
        if not sep:
            raise ValueError(f"bad address {url!r}: expected '[ipv6]:port'")
    else:
        host, sep, port_text = url.rpartition(":")
        if not sep:
            raise ValueError(f"bad address {url!r}: expected 'host:port'")
        if ":" in host:
            raise ValueError(f"bad address {url!r}: write IPv6 hosts in brackets, '[{host}]:port'")
    return host, _parse_port(url, port_text)


def _parse_port(url: str, port_text: str) -> int:
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"bad address {url!r}: port must be a number from 0 to 65535")
    return int(port_text)


def join_url(host: str, port: int) -> str:
    """Build a dialable ``host:port`` address, bracketing IPv6 literals (inverse of split_url)."""
    if ":" in host and not host.startswith(("[", "unix:", "unix-abstract:")):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


# --------------------------------------------------------------------------- TLS credentials and options


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


# --------------------------------------------------------------------------- call metadata


def auth_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying ``token``; pass it as ``metadata=`` on every RPC."""
    return ((TOKEN_METADATA_KEY, f"{TOKEN_SCHEME} {token}"),)
