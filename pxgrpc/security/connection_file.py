"""Connection files: where a controller publishes how to reach and authenticate to it.

A controller writes a *connection file* (JSON, mode 0600) holding its address, the client
token, the engine token and, with TLS, the CA that signed its certificate; an engine-only copy
leaves the client token out. Clients and engines read it with :func:`read_connection_file`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import stat
import tempfile
from dataclasses import dataclass
from typing import Any

import grpc

from pxgrpc.security.certs import CertKey
from pxgrpc.security.credentials import channel_credentials
from pxgrpc.security.errors import SecurityError

logger = logging.getLogger(__name__)

ENV_DIR = "PXGRPC_DIR"
ENV_CONNECTION_FILE = "PXGRPC_CONNECTION_FILE"
_REQUIRED_KEYS = ("url", "token", "engine_token")


# --------------------------------------------------------------------------- paths


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
    write_private_file(path, info.to_json())
    logger.debug("wrote connection file %s", path)


def write_private_file(path: pathlib.Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a reader sees the old file or the new one, never
    half of one): a temporary file in the same directory, mode 0600 from its creation, fsynced,
    then renamed over ``path``."""
    path = pathlib.Path(path)
    _make_private_dirs(path.parent)
    _tighten_pxgrpc_dir(path.parent)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_name, 0o600)
        os.replace(tmp_name, path)
    except BaseException:
        _unlink_quietly(tmp_name)
        raise


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
