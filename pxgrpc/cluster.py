"""A cluster: one controller on this machine and engines started by a launcher.

>>> import pxgrpc as ipp
>>> with ipp.Cluster(n=4) as rc:            # start, connect, and stop at the end
...     rc[:].apply_sync(os.getpid)
>>> cluster = ipp.Cluster(n=4)
>>> rc = cluster.start_and_connect_sync()
>>> cluster.stop_cluster_sync()
>>> ipp.Cluster(engines="ssh", hosts={"node1": 4, "node2": 4})   # or "mpi", "slurm"
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import pathlib
import secrets
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pxgrpc.addresses import is_loopback
from pxgrpc.client.client import Client
from pxgrpc.client.errors import PxConnectionError, PxError
from pxgrpc.clusterstate import ClusterState, remove_empty_logs
from pxgrpc.launchers import EngineSpec, Launcher, LaunchError, launcher_for
from pxgrpc.launchers.base import alive as _alive
from pxgrpc.launchers.base import reap as _reap
from pxgrpc.security.connection_file import (
    default_connection_file,
    engine_connection_file,
    pxgrpc_dir,
    read_connection_file,
)
from pxgrpc.security.errors import SecurityError

log = logging.getLogger(__name__)


class Cluster:
    """Start and stop a controller on this machine and `n` engines started by a launcher.

    `cluster_id` names the cluster (its connection file is `~/.pxgrpc/controller-ID.json`); the
    default is a fresh id, so that several clusters can run side by side. `""` is the default
    cluster that `Client()` finds without arguments.

    `engines` picks the launcher: "local" (child processes, the default), "ssh" (`hosts=`,
    `remote_python=`, `ssh_args=`), "mpi" (`mpi_args=`, engine ids equal MPI ranks) or "slurm"
    (`slurm_args=`). When engines run elsewhere the controller listens on `controller_ip`
    (default: this host's address towards the first host) with `--tls auto`. `timeout` bounds
    the wait for the engines to register. Local engines are forked from one process that
    imported what they use (fast to start, sharing memory); `fork_engines=False` starts each
    as a fresh interpreter. `restart_engines=True` replaces
    a dead engine under its id (fresh namespace); its task fails with an EngineError saying how it
    died.

    The controller runs under a small supervisor that restarts it with `--restore` when it dies
    (engines and clients reconnect and go on); `restart_controller=False` runs it bare.
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
        engines: str = "local",
        hosts: Mapping[str, int] | Sequence[str] | str | None = None,
        remote_python: str | None = None,
        controller_ip: str | None = None,
        mpi_args: list[str] | None = None,
        slurm_args: list[str] | None = None,
        ssh_args: list[str] | None = None,
        timeout: float = 60.0,
        fork_engines: bool | None = None,
        restart_engines: bool = False,
        restart_controller: bool = True,
    ) -> None:
        self.launcher_name = engines
        self.restart_engines = restart_engines
        self.restart_controller = restart_controller
        self.launcher_options: dict[str, Any] = {
            "hosts": hosts,
            "remote_python": remote_python,
            "mpi_args": mpi_args,
            "slurm_args": slurm_args,
            "ssh_args": ssh_args,
            "fork": fork_engines,
        }
        self._next_launcher: Launcher | None = launcher_for(engines, **self.launcher_options)
        counted = self._next_launcher.expected()
        if counted and n is not None and n != counted:
            raise PxError(f"n={n}, but hosts= names {counted} engines: give one or the other")
        self.n = n if n is not None else counted or (os.cpu_count() or 1)
        self.controller_ip = (
            controller_ip if controller_ip is not None else self._next_launcher.controller_ip()
        )
        self.timeout = timeout
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
        #: One launcher per batch of engines started.
        self.launchers: list[Launcher] = []
        self._client: Client | None = None

    def __repr__(self) -> str:
        state = "running" if self.controller is not None and self.controller.poll() is None else "stopped"
        return (
            f"<Cluster(cluster_id={self.cluster_id!r}, n={self.n}, engines={self.launcher_name!r}, {state})>"
        )

    @property
    def engines(self) -> list[subprocess.Popen[bytes]]:
        """The processes of this machine the launchers started (engines, or ssh/mpiexec/srun)."""
        return [p for launcher in self.launchers for p in launcher.local_processes()]

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

    def _network_args(self) -> list[str]:
        """Listen where remote engines can reach us, with TLS unless the user chose otherwise."""
        if not self.controller_ip or is_loopback(self.controller_ip):
            return []
        args = [] if "--ip" in self.controller_args else ["--ip", self.controller_ip]
        chosen = ("--tls", "--tls-cert", "--insecure")
        if not any(a.split("=")[0] in chosen for a in self.controller_args):
            args += ["--tls", "auto"]
        return args

    def start_controller_sync(self) -> None:
        """Start the controller (returns once its process is launched). `self.controller` is
        its process, or its supervisor's (see `restart_controller`)."""
        self._clear_stale_connection_file()
        args = [
            "-m",
            "pxgrpc.controller.supervisor" if self.restart_controller else "pxgrpc.controller",
            "--file",
            str(self.connection_file),
            "--log-level",
            self.log_level,
            "--cluster-id",
            self.cluster_id,
            *self._network_args(),
            *self.controller_args,
        ]
        self.controller = self._spawn(args, "controller")

    def start_engines_sync(self, n: int | None = None) -> None:
        """Start `n` more engines with this cluster's launcher (local ones wait for the
        controller's connection file; other launchers carry its engine-only copy)."""
        launcher = self._next_launcher or launcher_for(self.launcher_name, **self.launcher_options)
        self._next_launcher = None
        engine_file = engine_connection_file(self.connection_file)
        spec = EngineSpec(
            connection_file=self.connection_file,
            engine_file=engine_file,
            n=self.n if n is None else n,
            cluster_id=self.cluster_id,
            log_dir=self.log_dir,
            log_level=self.log_level,
            engine_args=self.engine_args,
            env=self.env,
            timeout=self.timeout,
            index=sum(launcher.expected() for launcher in self.launchers),
            restart=self.restart_engines,
        )
        if launcher.name != "local":
            self._wait_for_file(engine_file, self.timeout)
        self.launchers.append(launcher)
        try:
            launcher.start(spec)
        finally:
            self._save_state()

    def _save_state(self) -> None:
        ClusterState(
            cluster_id=self.cluster_id,
            connection_file=str(self.connection_file),
            controller_pid=self.controller.pid if self.controller else 0,
            engine_pids=[p.pid for p in self.engines if self.launcher_name == "local"],
            log_dir=str(self.log_dir),
            launchers=[launcher.saved() for launcher in self.launchers],
        ).save()

    def start_cluster_sync(self, n: int | None = None) -> None:
        """Start the controller and the engines, all at once."""
        self.start_controller_sync()
        self.start_engines_sync(n)

    def wait_for_connection_file(self, timeout: float = 30.0) -> None:
        """Wait until the controller has written its connection file."""
        self._wait_for_file(self.connection_file, timeout)

    def _wait_for_file(self, path: pathlib.Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
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
        self, n: int | None = None, activate: bool = False, timeout: float | None = None
    ) -> Client:
        """Start everything, connect, and wait until all engines have registered (at most
        `timeout` seconds, default the cluster's). If that fails, everything started is
        stopped again before the error is raised."""
        timeout = self.timeout if timeout is None else timeout
        try:
            self.start_cluster_sync(n)
            client = self.connect_client_sync(timeout)
            self.wait_for_engines(client, timeout)
        except BaseException:
            self.stop_cluster_sync()
            raise
        if activate:
            client.activate()
        return client

    def wait_for_engines(
        self,
        client: Client,
        timeout: float | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """Wait until every engine the launchers started has registered; `progress(count,
        expected)` is called whenever the count changes.

        Raises LaunchError (a PxError) naming the launcher, the host or job, and the last
        lines of stderr when a launch command fails or `timeout` passes first.
        """
        timeout = self.timeout if timeout is None else timeout
        expected = sum(launcher.expected() for launcher in self.launchers)
        deadline = time.monotonic() + timeout
        seen = -1
        while (count := len(client.ids)) < expected:
            if progress is not None and count != seen:
                progress(count, expected)
                seen = count
            for launcher in self.launchers:
                launcher.check()
            if time.monotonic() > deadline:
                launcher = self.launchers[-1]
                raise LaunchError(
                    launcher.name,
                    launcher.state().where(),
                    f"only {len(client.ids)} of {expected} engines registered within {timeout:.0f} s "
                    f"(logs in {self.log_dir})",
                    launcher.last_stderr(),
                )
            time.sleep(0.01)

    # --- stopping -------------------------------------------------------------------------

    def stop_engines_sync(self) -> None:
        """Stop this cluster's engines."""
        if self._client is not None:
            with contextlib.suppress(PxError):
                self._client.shutdown(hub=False)
        self._stop_launchers(3.0)

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
            self._stop_launchers(5.0 if asked else 0.2)
            _reap([self.controller] if self.controller else [], 3.0 if asked else 0.2)
            self.controller = None
            with contextlib.suppress(FileNotFoundError):
                ClusterState.path(self.cluster_id).unlink()
            with contextlib.suppress(FileNotFoundError):
                self.connection_file.unlink()
            remove_empty_logs(self.log_dir, self.cluster_id)

    def _stop_launchers(self, grace: float) -> None:
        """Stop every launcher's engines (each waits up to `grace` s for them to exit on their own)."""
        launchers, self.launchers = self.launchers, []
        errors: list[BaseException] = []
        for launcher in launchers:
            try:
                launcher.stop(grace)
            except Exception as exc:  # noqa: BLE001 - stop the others first, then report
                log.error("stopping the %s launcher's engines failed: %s", launcher.name, exc)
                errors.append(exc)
        if errors:
            raise errors[0]

    # --- async and context-manager forms --------------------------------------------------

    async def start_and_connect(self, n: int | None = None, activate: bool = False) -> Client:
        return await asyncio.to_thread(self.start_and_connect_sync, n, activate)

    async def start_cluster(self, n: int | None = None) -> None:
        await asyncio.to_thread(self.start_cluster_sync, n)

    async def stop_cluster(self) -> None:
        await asyncio.to_thread(self.stop_cluster_sync)

    def __enter__(self) -> Client:
        return self.start_and_connect_sync()  # (which stops everything again if it fails)

    def __exit__(self, *exc: Any) -> None:
        self.stop_cluster_sync()


def _stop_at_exit(ref: weakref.ReferenceType[Cluster]) -> None:
    cluster = ref()
    if cluster is not None and (cluster.controller is not None or cluster.launchers):
        cluster.stop_cluster_sync()
