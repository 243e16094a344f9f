"""Engines as the ranks of one `mpiexec` (Open MPI or MPICH): engine id == MPI rank.

    mpiexec -n N [--allow-run-as-root] [--oversubscribe] MPI_ARGS python -m pxgrpc.engine --mpi ...

Each engine asks the controller for its rank as its id, so code in `%%px` cells can use mpi4py
collectives (`MPI.COMM_WORLD.allreduce(rank)`) across the engines of a view. The engines read
the engine-only connection file from its path: on several hosts (`hosts=` or a hostfile in
`mpi_args`) that path must be on a shared filesystem, as MPI programs usually are.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from typing import Any

from pxgrpc.client.errors import PxError
from pxgrpc.launchers.base import (
    TAIL_LINES,
    EngineSpec,
    LaunchError,
    LauncherState,
    alive,
    kill_groups,
    python_path,
    reap,
    run_tool,
    spawn,
    tail,
)
from pxgrpc.launchers.ssh import parse_hosts, route_address


class MPILauncher:
    """Starts `n` engines with one `mpiexec`; stopping ends mpiexec and with it every rank."""

    name = "mpi"
    OPTIONS = ("mpi_args", "hosts", "remote_python", "mpiexec")

    def __init__(
        self,
        mpi_args: list[str] | None = None,
        hosts: Any = None,
        remote_python: str | None = None,
        mpiexec: str = "mpiexec",
    ) -> None:
        self.mpi_args = list(mpi_args or [])
        self.hosts = parse_hosts(hosts) if hosts else {}
        self.python = remote_python
        self.mpiexec = mpiexec
        self.process: subprocess.Popen[bytes] | None = None
        self.log = ""
        self.n = sum(self.hosts.values())
        self._pid = 0  # when restored: the mpiexec of an earlier run

    def expected(self) -> int:
        return self.n

    def controller_ip(self) -> str | None:
        remote = [h for h in self.hosts if h not in ("localhost", "127.0.0.1")]
        return route_address(remote[0]) if remote else None

    def start(self, spec: EngineSpec) -> None:
        self.n = self.n or spec.n
        command = self.command(spec)
        self.log = str(spec.log_path("mpiexec"))
        try:
            self.process = spawn(command, spec.log_path("mpiexec"), spec.env)
        except OSError as exc:
            raise LaunchError(self.name, self.mpiexec, f"cannot run {command[0]!r}: {exc}") from exc

    def command(self, spec: EngineSpec) -> list[str]:
        """The mpiexec command line for `spec`."""
        if spec.restart:
            raise LaunchError(
                self.name,
                "",
                "engines cannot be restarted (restart_engines, --restart-engines): a dead MPI rank "
                "cannot be replaced, its communicator is gone; use the local, ssh or slurm launcher",
            )
        mpiexec = shutil.which(self.mpiexec, path=spec.env.get("PATH"))
        if mpiexec is None:
            raise LaunchError(
                self.name,
                self.mpiexec,
                f"{self.mpiexec!r} is not on PATH: install Open MPI or MPICH (Debian: "
                "`apt-get install openmpi-bin`) or pass mpiexec=/path/to/mpiexec",
            )
        flavour = mpi_flavour(mpiexec)
        command = [mpiexec, "-n", str(self.n)]
        if flavour == "openmpi":
            if os.geteuid() == 0:
                command.append("--allow-run-as-root")
            # Engines wait for work most of the time: more engines than cores is the normal case.
            command.append("--oversubscribe")
            if self.hosts:
                command += ["--host", ",".join(f"{h}:{k}" for h, k in self.hosts.items())]
        elif self.hosts:
            command += ["-hosts", ",".join(f"{h}:{k}" for h, k in self.hosts.items())]
        python = self.python or python_path()
        return [*command, *self.mpi_args, *spec.engine_command(python, str(spec.engine_file), "--mpi")]

    def check(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise LaunchError(
                self.name,
                f"mpiexec -n {self.n}",
                f"mpiexec exited with status {self.process.returncode} before the engines registered",
                self.last_stderr(),
            )

    def state(self) -> LauncherState:
        if self.process is not None:
            code = self.process.poll()
            return LauncherState(self.name, code is None, exit_code=code, detail=f"{self.n} ranks")
        return LauncherState(self.name, alive(self._pid), detail=f"{self.n} ranks, mpiexec pid {self._pid}")

    def stop(self, grace: float = 3.0) -> None:
        # mpiexec forwards SIGTERM to every rank, then exits: one process group to end.
        if self.process is not None:
            reap([self.process], grace)
        kill_groups([self._pid] if self._pid else [])
        self._pid = 0

    def last_stderr(self, lines: int = TAIL_LINES) -> list[str]:
        return tail(self.log, lines) if self.log else []

    def local_processes(self) -> list[subprocess.Popen[bytes]]:
        return [self.process] if self.process is not None else []

    def saved(self) -> dict[str, Any]:
        pid = self.process.pid if self.process is not None else self._pid
        return {"name": self.name, "pid": pid, "n": self.n, "log": self.log}

    @classmethod
    def restore(cls, saved: dict[str, Any]) -> MPILauncher:
        launcher = cls()
        launcher._pid, launcher.n, launcher.log = int(saved["pid"]), int(saved["n"]), str(saved["log"])
        return launcher


@functools.cache
def mpi_flavour(mpiexec: str) -> str:
    """'openmpi', 'mpich' or 'unknown': which MPI `mpiexec` belongs to (by its --version)."""
    result = run_tool([mpiexec, "--version"], timeout=20)
    text = (result.stdout + result.stderr).lower()
    if "open mpi" in text or "openrte" in text:
        return "openmpi"
    if "hydra" in text or "mpich" in text or "intel" in text:
        return "mpich"
    if result.returncode == 127:
        raise PxError(f"mpi launcher: cannot run {mpiexec}")
    return "unknown"
