"""A cluster started earlier, found again by its id: what it leaves on disk (`cluster.json`,
`ClusterState`), stopping it, and how its launchers are doing (`pxgrpc cluster stop/status`)."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pathlib
import re
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from pxgrpc.client.client import Client
from pxgrpc.client.errors import PxError
from pxgrpc.launchers import LauncherState, restore
from pxgrpc.launchers.base import alive as _alive
from pxgrpc.security.connection_file import default_connection_file, pxgrpc_dir, write_private_file
from pxgrpc.security.errors import SecurityError


@dataclass
class ClusterState:
    """What `pxgrpc cluster stop/status` needs to find a cluster started earlier."""

    cluster_id: str
    connection_file: str
    controller_pid: int = 0
    engine_pids: list[int] = field(default_factory=list)
    log_dir: str = ""
    #: `Launcher.saved()` of each batch of engines, to report on and stop them later.
    launchers: list[dict[str, Any]] = field(default_factory=list)

    @staticmethod
    def path(cluster_id: str) -> pathlib.Path:
        name = f"cluster-{cluster_id}.json" if cluster_id else "cluster.json"
        return pxgrpc_dir() / name

    def save(self) -> None:
        write_private_file(self.path(self.cluster_id), json.dumps(self.__dict__, indent=2))

    @classmethod
    def load(cls, cluster_id: str) -> ClusterState | None:
        path = cls.path(cluster_id)
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))


def stop_by_id(cluster_id: str, timeout: float = 5.0) -> bool:
    """Stop a cluster started earlier (by `pxgrpc cluster start`); False if none was found.

    Asks the controller to shut everything down, then has each launcher make sure its engines
    are gone (scancel, ssh kill, process groups), and kills the controller if it lingers.
    """
    state = ClusterState.load(cluster_id)
    conn = pathlib.Path(state.connection_file) if state else default_connection_file(cluster_id)
    found = False
    with contextlib.suppress(PxError, SecurityError, OSError), Client(conn, timeout=3) as rc:
        rc.shutdown(hub=True)
        found = True
    pids = [state.controller_pid] if state else []
    if state is not None:
        for saved in state.launchers or [{"name": "local", "pids": state.engine_pids}]:
            with contextlib.suppress(PxError):
                restore(saved).stop(timeout)
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            found = True
    with contextlib.suppress(FileNotFoundError):
        ClusterState.path(cluster_id).unlink()
    with contextlib.suppress(FileNotFoundError):
        conn.unlink()
    if state is not None and state.log_dir:
        remove_empty_logs(pathlib.Path(state.log_dir), cluster_id)
    return found or bool(pids)


#: The logs a cluster's processes write, after "<cluster id>-" (`EngineSpec.log_path`).
_LOG_NAME = re.compile(
    r"(controller|engine-\d+|engine-forkserver-\d+|mpiexec|slurm-\d+-step|ssh-[\w.-]+)\.log"
)


def remove_empty_logs(log_dir: pathlib.Path, cluster_id: str) -> None:
    """A stopped cluster's log files on this host that stayed empty (nothing went wrong) go, as
    ipyparallel removes its processes' output files: else every start left one per engine
    behind. Those with something in them stay, for whoever looks into what happened. Nothing
    goes while a cluster whose id starts with this one's and a dash runs (its logs' names
    start the same)."""
    if not cluster_id or any(pxgrpc_dir().glob(f"controller-{glob.escape(cluster_id)}-*.json")):
        return
    prefix = f"{cluster_id}-"
    for path in log_dir.glob(f"{glob.escape(prefix)}*.log"):
        if _LOG_NAME.fullmatch(path.name[len(prefix) :]) is None:
            continue
        with contextlib.suppress(OSError):
            if path.stat().st_size == 0:
                path.unlink()


def launcher_states(cluster_id: str) -> list[LauncherState]:
    """How the launchers of a cluster started by `pxgrpc cluster start` are doing."""
    state = ClusterState.load(cluster_id)
    if state is None:
        return []
    return [restore(saved).state() for saved in state.launchers]
