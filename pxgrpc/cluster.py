"""A local cluster: one controller and n engines as child processes of this machine.

>>> import pxgrpc as ipp
>>> with ipp.Cluster(n=4) as rc:            # start, connect, and stop at the end
...     rc[:].apply_sync(os.getpid)
>>> cluster = ipp.Cluster(n=4)
>>> rc = cluster.start_and_connect_sync()
>>> cluster.stop_cluster_sync()
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import os
import pathlib
import secrets
import signal
import subprocess
import sys
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from pxgrpc.client.client import Client
from pxgrpc.client.errors import PxConnectionError, PxError
from pxgrpc.security.connection_file import default_connection_file, pxgrpc_dir, read_connection_file
from pxgrpc.security.errors import SecurityError

log = logging.getLogger(__name__)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class ClusterState:
    """What `pxgrpc cluster stop/status` needs to find a cluster started earlier."""

    cluster_id: str
    connection_file: str
    controller_pid: int = 0
    engine_pids: list[int] = field(default_factory=list)
    log_dir: str = ""

    @staticmethod
    def path(cluster_id: str) -> pathlib.Path:
        name = f"cluster-{cluster_id}.json" if cluster_id else "cluster.json"
        return pxgrpc_dir() / name

    def save(self) -> None:
        path = self.path(self.cluster_id)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.write_text(json.dumps(self.__dict__, indent=2))

    @classmethod
    def load(cls, cluster_id: str) -> ClusterState | None:
        path = cls.path(cluster_id)
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))


class Cluster:
    """Start and stop a controller and `n` engines on this machine.

    `cluster_id` names the cluster (its connection file is `~/.pxgrpc/controller-ID.json`); the
    default is a fresh id, so that several clusters can run side by side. `""` is the default
    cluster that `Client()` finds without arguments.
    """

    def __init__(
        self,
        n: int | None = None,
        *,
        cluster_id: str | None = None,
        connection_file: str | os.PathLike[str] | None = None,
        controller_args: list[str] | None = None,
        engine_args: list[str] | None = None,
        log_level: str = "WARNING",
        env: dict[str, str] | None = None,
        shutdown_atexit: bool = True,
    ) -> None:
        self.n = n if n is not None else (os.cpu_count() or 1)
        if shutdown_atexit:
            # As ipyparallel does: a script that forgets stop_cluster_sync() leaves no processes.
            atexit.register(_stop_at_exit, weakref.ref(self))
        if cluster_id is None:
            cluster_id = f"{int(time.time())}-{secrets.token_hex(2)}"
        self.cluster_id = cluster_id
        self.connection_file = (
            pathlib.Path(connection_file) if connection_file else default_connection_file(cluster_id)
        )
        if not connection_file and not cluster_id:
            self.connection_file = pxgrpc_dir() / "controller.json"
        self.controller_args = list(controller_args or [])
        self.engine_args = list(engine_args or [])
        self.log_level = log_level
        self.env = {**os.environ, **(env or {})}
        self.log_dir = pxgrpc_dir() / "logs"
        self.controller: subprocess.Popen[bytes] | None = None
        self.engines: list[subprocess.Popen[bytes]] = []
        self._client: Client | None = None

    def __repr__(self) -> str:
        state = "running" if self.controller is not None and self.controller.poll() is None else "stopped"
        return f"<Cluster(cluster_id={self.cluster_id!r}, n={self.n}, {state})>"

    # --- starting -------------------------------------------------------------------------

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        log_path = self.log_dir / f"{self.cluster_id or 'default'}-{log_name}.log"
        with open(log_path, "ab") as out:
            return subprocess.Popen(
                [sys.executable, *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # its own process group: Ctrl-C here does not reach it
            )

    def _clear_stale_connection_file(self) -> None:
        if not self.connection_file.exists():
            return
        try:
            info = read_connection_file(self.connection_file)
        except SecurityError:
            info = None
        if info is not None and _alive(info.controller_pid):
            raise PxError(
                f"a controller (pid {info.controller_pid}) already uses {self.connection_file}; "
                f"stop it (`pxgrpc cluster stop --cluster-id '{self.cluster_id}'`) "
                "or choose another cluster_id"
            )
        self.connection_file.unlink()

    def start_controller_sync(self) -> None:
        """Start the controller (returns once its process is launched)."""
        self._clear_stale_connection_file()
        args = [
            "-m",
            "pxgrpc.controller",
            "--file",
            str(self.connection_file),
            "--log-level",
            self.log_level,
            "--cluster-id",
            self.cluster_id,
            *self.controller_args,
        ]
        self.controller = self._spawn(args, "controller")

    def start_engines_sync(self, n: int | None = None) -> None:
        """Start `n` more engines; they wait for the controller's connection file."""
        count = self.n if n is None else n
        args = [
            "-m",
            "pxgrpc.engine",
            "--file",
            str(self.connection_file),
            "--wait",
            "60",
            "--log-level",
            self.log_level,
            *self.engine_args,
        ]
        first = len(self.engines)
        for i in range(count):
            self.engines.append(self._spawn(args, f"engine-{first + i}"))
        self._save_state()

    def _save_state(self) -> None:
        ClusterState(
            cluster_id=self.cluster_id,
            connection_file=str(self.connection_file),
            controller_pid=self.controller.pid if self.controller else 0,
            engine_pids=[p.pid for p in self.engines],
            log_dir=str(self.log_dir),
        ).save()

    def start_cluster_sync(self, n: int | None = None) -> None:
        """Start the controller and the engines, all at once."""
        self.start_controller_sync()
        self.start_engines_sync(n)

    def wait_for_connection_file(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.connection_file.exists():
            if self.controller is not None and self.controller.poll() is not None:
                raise PxError(
                    f"the controller exited with status {self.controller.returncode}; "
                    f"see {self.log_dir}/{self.cluster_id or 'default'}-controller.log"
                )
            if time.monotonic() > deadline:
                raise PxError(f"the controller wrote no connection file within {timeout:.0f} s")
            time.sleep(0.005)

    def connect_client_sync(self, timeout: float = 30.0) -> Client:
        """A Client connected to this cluster's controller."""
        self.wait_for_connection_file(timeout)
        self._client = Client(self.connection_file)
        return self._client

    def start_and_connect_sync(
        self, n: int | None = None, activate: bool = False, timeout: float = 60.0
    ) -> Client:
        """Start everything, connect, and wait until all engines have registered."""
        self.start_cluster_sync(n)
        client = self.connect_client_sync(timeout)
        expected = len(self.engines)
        deadline = time.monotonic() + timeout
        while len(client.ids) < expected:
            dead = [p for p in self.engines if p.poll() is not None]
            if dead:
                raise PxError(f"{len(dead)} engine(s) exited during start-up; see the logs in {self.log_dir}")
            if time.monotonic() > deadline:
                raise PxError(
                    f"only {len(client.ids)} of {expected} engines registered within {timeout:.0f} s"
                )
            time.sleep(0.01)
        if activate:
            client.activate()
        return client

    # --- stopping -------------------------------------------------------------------------

    def stop_engines_sync(self) -> None:
        """Stop this cluster's engines."""
        if self._client is not None:
            with contextlib.suppress(PxError):
                self._client.shutdown(hub=False)
        _reap(self.engines, 3.0)
        self.engines = []

    def stop_controller_sync(self) -> None:
        if self._client is not None:
            with contextlib.suppress(PxError):
                self._client.shutdown(targets=[], hub=True)
            self._client.close()
            self._client = None
        if self.controller is not None:
            _reap([self.controller], 3.0)
            self.controller = None
        with contextlib.suppress(FileNotFoundError):
            ClusterState.path(self.cluster_id).unlink()

    def stop_cluster_sync(self) -> None:
        """Stop engines and controller; kill whatever does not stop within a few seconds."""
        asked = False
        try:
            if self._client is not None:
                with contextlib.suppress(PxError, PxConnectionError):
                    self._client.shutdown(hub=True)
                    asked = True
                self._client.close()
                self._client = None
        finally:
            # Processes asked to stop get a few seconds; otherwise SIGTERM comes (almost) at once.
            _reap([*self.engines, *([self.controller] if self.controller else [])], 5.0 if asked else 0.2)
            self.engines = []
            self.controller = None
            with contextlib.suppress(FileNotFoundError):
                ClusterState.path(self.cluster_id).unlink()
            with contextlib.suppress(FileNotFoundError):
                self.connection_file.unlink()

    # --- async and context-manager forms --------------------------------------------------

    async def start_and_connect(self, n: int | None = None, activate: bool = False) -> Client:
        return await asyncio.to_thread(self.start_and_connect_sync, n, activate)

    async def start_cluster(self, n: int | None = None) -> None:
        await asyncio.to_thread(self.start_cluster_sync, n)

    async def stop_cluster(self) -> None:
        await asyncio.to_thread(self.stop_cluster_sync)

    def __enter__(self) -> Client:
        try:
            return self.start_and_connect_sync()
        except BaseException:
            self.stop_cluster_sync()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.stop_cluster_sync()


def _stop_at_exit(ref: weakref.ReferenceType[Cluster]) -> None:
    cluster = ref()
    if cluster is not None and (cluster.controller is not None or cluster.engines):
        cluster.stop_cluster_sync()


def _reap(processes: list[subprocess.Popen[bytes]], grace: float) -> None:
    """Wait for processes to exit; SIGTERM then SIGKILL their process groups if they do not."""
    deadline = time.monotonic() + grace
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        for p in processes:
            if p.poll() is None and sig is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, sig)
        for p in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.0, deadline - time.monotonic()))
        if all(p.poll() is not None for p in processes):
            return
        deadline = time.monotonic() + 2.0


def stop_by_id(cluster_id: str, timeout: float = 5.0) -> bool:
    """Stop a cluster started earlier (by `pxgrpc cluster start`); False if none was found."""
    state = ClusterState.load(cluster_id)
    conn = pathlib.Path(state.connection_file) if state else default_connection_file(cluster_id)
    found = False
    with contextlib.suppress(PxError, SecurityError, OSError), Client(conn, timeout=3) as rc:
        rc.shutdown(hub=True)
        found = True
    pids = [state.controller_pid, *state.engine_pids] if state else []
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
    return found or bool(pids)
