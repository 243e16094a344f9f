"""What a controller keeps beside its connection file so that `--restore` can bring it back.

Beside ``controller.json`` a controller keeps ``controller-tls.json`` (with `--tls auto`: the CA,
server and client certificates and keys it made) and ``controller-state.json`` (the engine ids
it gave out), both mode 0600 and written atomically. `pxgrpc-controller --restore` reads them
with the connection file and comes back on the same port, with the same tokens and
certificates: engines and clients that lost it reconnect as if nothing happened.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
from dataclasses import dataclass, field

import psutil

from pxgrpc.security.certs import CertKey
from pxgrpc.security.connection_file import ConnectionInfo, read_connection_file, write_private_file
from pxgrpc.security.errors import SecurityError


def tls_file(connection_file: pathlib.Path) -> pathlib.Path:
    """``controller.json`` -> ``controller-tls.json``."""
    return connection_file.with_name(f"{connection_file.stem}-tls.json")


def state_file(connection_file: pathlib.Path) -> pathlib.Path:
    """``controller.json`` -> ``controller-state.json``."""
    return connection_file.with_name(f"{connection_file.stem}-state.json")


@dataclass
class AutoTls:
    """The certificates `--tls auto` made: kept so that a restored controller presents the same."""

    ca: CertKey
    server: CertKey
    clients: dict[str, CertKey] = field(default_factory=dict)

    def save(self, path: pathlib.Path) -> None:
        pairs = {"ca": self.ca, "server": self.server, **{f"client:{k}": v for k, v in self.clients.items()}}
        data = {name: {"cert": p.cert_pem.decode(), "key": p.key_pem.decode()} for name, p in pairs.items()}
        write_private_file(path, json.dumps(data, indent=1) + "\n")

    @classmethod
    def load(cls, path: pathlib.Path) -> AutoTls:
        try:
            data = json.loads(path.read_text())
            pairs = {name: CertKey(v["cert"].encode(), v["key"].encode()) for name, v in data.items()}
            clients = {k.split(":", 1)[1]: v for k, v in pairs.items() if k.startswith("client:")}
            return cls(pairs["ca"], pairs["server"], clients)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SecurityError(
                f"--restore: cannot read the certificates of --tls auto from {path} ({exc}); "
                "start the controller without --restore (engines and clients must then be restarted)"
            ) from None


@dataclass
class EngineIds:
    """The engine ids a controller gave out: a restored one keeps them for their engines."""

    live: list[int] = field(default_factory=list)
    next_id: int = 0

    def save(self, path: pathlib.Path) -> None:
        write_private_file(path, json.dumps({"live": self.live, "next_id": self.next_id}) + "\n")

    @classmethod
    def load(cls, path: pathlib.Path) -> EngineIds:
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            data = json.loads(path.read_text())
            return cls([int(i) for i in data["live"]], int(data["next_id"]))
        return cls()


def previous_controller(connection_file: pathlib.Path) -> ConnectionInfo:
    """The connection file of the controller to restore, checked to be dead."""
    if not connection_file.exists():
        raise SecurityError(
            f"--restore: no connection file at {connection_file}, nothing to restore "
            "(a controller that stopped cleanly removes it); start without --restore"
        )
    info = read_connection_file(connection_file)
    pid = info.controller_pid
    if pid and _running(pid):
        raise SecurityError(
            f"--restore: the controller of {connection_file} (pid {pid}) is still running; stop it first"
        )
    return info


def _running(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False
