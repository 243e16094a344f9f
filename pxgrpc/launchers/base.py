"""The launcher contract: how a cluster starts, watches and stops its engines.

A launcher is one small object per batch of engines. `pxgrpc.Cluster` (and through it
`pxgrpc cluster start`) hands it an `EngineSpec` — which connection file the engines use, how
many, where their logs go — and from then on only calls `start`, `check`, `state`, `stop` and
`last_stderr`. Each mechanism (local processes, OpenSSH, mpiexec, Slurm) is one module; the
factory `launcher_for(name, **options)` picks it by name.

    >>> launcher = launcher_for("mpi", mpi_args=["--bind-to", "none"])
    >>> launcher.start(spec)           # returns once the command is launched
    >>> launcher.check()               # raises LaunchError if it already failed
    >>> launcher.stop()                # idempotent; leaves nothing running
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from pxgrpc.addresses import is_loopback
from pxgrpc.client.errors import PxError

__all__ = [
    "LAUNCHERS",
    "EngineSpec",
    "LaunchError",
    "Launcher",
    "LauncherState",
    "alive",
    "is_loopback",
    "kill_groups",
    "launcher_for",
    "python_path",
    "reap",
    "restore",
    "run_tool",
    "spawn",
    "tail",
]

#: Launcher names and the class implementing each (imported only when used).
LAUNCHERS = {
    "local": "pxgrpc.launchers.local:LocalLauncher",
    "ssh": "pxgrpc.launchers.ssh:SSHLauncher",
    "mpi": "pxgrpc.launchers.mpi:MPILauncher",
    "slurm": "pxgrpc.launchers.slurm:SlurmLauncher",
}
#: How many lines of a command's stderr an error message quotes.
TAIL_LINES = 12


class LaunchError(PxError):
    """Engines could not be started (or failed while starting).

    The message names the launcher, the host or job concerned, and quotes the last lines the
    command wrote to stderr.
    """

    def __init__(self, launcher: str, where: str, problem: str, stderr: Iterable[str] = ()) -> None:
        self.launcher, self.where, self.problem = launcher, where, problem
        self.stderr = list(stderr)
        text = f"{launcher} launcher, {where}: {problem}" if where else f"{launcher} launcher: {problem}"
        if self.stderr:
            text += "\n  last lines of stderr:\n" + "\n".join(f"    {line}" for line in self.stderr)
        super().__init__(text)


@dataclass
class EngineSpec:
    """What a launcher needs to start the engines of one cluster."""

    #: The controller's full connection file (engines on this host may use it).
    connection_file: pathlib.Path
    #: Its engine-only copy (no client token): what is carried to other hosts.
    engine_file: pathlib.Path
    #: How many engines to start (launchers with hosts count those instead).
    n: int
    cluster_id: str
    log_dir: pathlib.Path
    log_level: str = "WARNING"
    #: Extra arguments for every `pxgrpc-engine`.
    engine_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    #: Seconds the engines may take to register.
    timeout: float = 60.0
    #: How many engines the cluster started before these (numbers their log files).
    index: int = 0
    #: Run each engine under a supervisor (`pxgrpc-engine --restart`) that replaces it under
    #: its id when it dies and tells the controller how it died.
    restart: bool = False

    def log_path(self, name: str) -> pathlib.Path:
        """A log file of this cluster in `log_dir` (which is created, private)."""
        self.log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self.log_dir / f"{self.cluster_id or 'default'}-{name}.log"

    def engine_command(self, python: str, connection_file: str, *extra: str) -> list[str]:
        """The command line of one engine."""
        return [
            python,
            "-m",
            "pxgrpc.engine",
            "--file",
            connection_file,
            "--log-level",
            self.log_level,
            *(["--restart"] if self.restart else []),
            *extra,
            *self.engine_args,
        ]


@dataclass
class LauncherState:
    """What `pxgrpc cluster status` says about a launcher."""

    launcher: str
    #: True while the launched command (or job) runs.
    running: bool
    #: Its exit status once it has ended (None while running or when unknown).
    exit_code: int | None = None
    #: The batch system's job id, when there is one.
    job_id: str = ""
    #: More words: the job state, the hosts, ...
    detail: str = ""

    def where(self) -> str:
        """The job or the hosts, as error messages name them."""
        if self.job_id:
            return f"job {self.job_id} ({self.detail})" if self.detail else f"job {self.job_id}"
        return self.detail

    def describe(self) -> str:
        words = [f"launcher {self.launcher}"]
        if self.job_id:
            words.append(f"job {self.job_id}")
        words.append("running" if self.running else f"exited ({self.exit_code})")
        if self.detail:
            words.append(self.detail)
        return ", ".join(words)


@runtime_checkable
class Launcher(Protocol):
    """Starts engines one way, reports on them, and stops them."""

    #: The name `launcher_for` knows it by ("local", "ssh", ...).
    name: str

    def start(self, spec: EngineSpec) -> None:
        """Launch the engines; return once the command runs (not once they registered).
        Raises LaunchError when the command cannot be run or refuses at once."""

    def expected(self) -> int:
        """How many engines this launcher starts."""

    def controller_ip(self) -> str | None:
        """The address the controller must listen on for these engines to reach it (with TLS),
        or None when they run on this host and loopback will do."""

    def check(self) -> None:
        """Raise LaunchError if the engines can no longer come up (the command ended)."""

    def state(self) -> LauncherState:
        """Whether the launched command or job runs, with its exit code or job id."""

    def stop(self, grace: float = 3.0) -> None:
        """Stop every engine this launcher started, wherever it runs, giving them `grace`
        seconds to exit on their own first (they usually were asked to). Idempotent."""

    def last_stderr(self, lines: int = TAIL_LINES) -> list[str]:
        """The last lines the launch command (and engines) wrote to stderr."""

    def local_processes(self) -> list[subprocess.Popen[bytes]]:
        """The processes of this machine the launcher started (engines, ssh, mpiexec, srun)."""

    def saved(self) -> dict[str, Any]:
        """JSON-able state from which `restore` can report on and stop the engines later,
        from another process (`pxgrpc cluster stop`)."""


def launcher_for(name: str, **options: Any) -> Launcher:
    """The launcher called `name` ("local", "ssh", "mpi" or "slurm"), built with `options`.

    Options a launcher does not take are refused with a PxError naming them.
    """
    target = LAUNCHERS.get(name)
    if target is None:
        raise PxError(f"unknown launcher {name!r}: choose one of {', '.join(sorted(LAUNCHERS))}")
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    accepted = set(getattr(cls, "OPTIONS", ()))
    unknown = sorted(k for k, v in options.items() if v is not None and k not in accepted)
    if unknown:
        raise PxError(
            f"the {name} launcher takes no {', '.join(unknown)} "
            f"(it takes: {', '.join(sorted(accepted)) or 'no options'})"
        )
    launcher: Launcher = cls(**{k: v for k, v in options.items() if v is not None})
    return launcher


def restore(saved: dict[str, Any]) -> Launcher:
    """The launcher described by `saved` (from `Launcher.saved()`), able to report and stop."""
    target = LAUNCHERS.get(str(saved.get("name")))
    if target is None:
        raise PxError(f"unknown launcher in saved cluster state: {saved.get('name')!r}")
    module_name, _, class_name = target.partition(":")
    launcher: Launcher = getattr(importlib.import_module(module_name), class_name).restore(saved)
    return launcher


# --------------------------------------------------------------------------- helpers for launchers


def tail(path: pathlib.Path | str, lines: int = TAIL_LINES) -> list[str]:
    """The last non-empty lines of a log file (none if it does not exist)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            text = fh.read().decode(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


def spawn(
    command: list[str],
    log_path: pathlib.Path,
    env: dict[str, str],
    stdin: int | None = subprocess.DEVNULL,
) -> subprocess.Popen[bytes]:
    """Start `command` in its own process group (Ctrl-C here does not reach it), appending
    its stdout and stderr to `log_path`."""
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            command,
            stdin=stdin,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def alive(pid: int) -> bool:
    """Whether process `pid` exists (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap(processes: list[subprocess.Popen[bytes]], grace: float) -> None:
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


def kill_groups(pids: Iterable[int], grace: float = 3.0) -> None:
    """SIGTERM the process groups led by `pids` (processes of an earlier run), SIGKILL what
    is left after `grace` seconds."""
    pids = [p for p in pids if alive(p)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)
        deadline = time.monotonic() + grace
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        pids = [p for p in pids if alive(p)]
        if not pids:
            return


def run_tool(
    command: list[str], timeout: float, env: dict[str, str] | None = None, stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a short command (sbatch, squeue, ssh ... kill) to completion, capturing its output;
    a command that does not finish within `timeout` is reported as exit status 124."""
    try:
        return subprocess.run(
            command,
            input=stdin.decode() if stdin is not None else None,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        return subprocess.CompletedProcess(command, 124, "", err + f"\n(no answer within {timeout:.0f} s)")
    except FileNotFoundError:
        return subprocess.CompletedProcess(command, 127, "", f"{command[0]}: command not found")


def python_path() -> str:
    """This interpreter: the default for engines (on other hosts, the same path)."""
    return sys.executable
