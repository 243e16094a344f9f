"""Engines as child processes of this machine (the default launcher)."""

from __future__ import annotations

import pathlib
import subprocess
import sys
from typing import Any

from pxgrpc.launchers.base import (
    TAIL_LINES,
    EngineSpec,
    LaunchError,
    LauncherState,
    alive,
    kill_groups,
    python_path,
    reap,
    spawn,
    tail,
)


class LocalLauncher:
    """`n` engine processes here, logging to the cluster's log directory. They use the full
    connection file and wait for it to appear, so they can start alongside the controller.

    By default (`fork=True`) one engine forkserver process imports what engines use once and
    forks the `n` engines, which then share those pages: a cluster of many engines starts in a
    fraction of the time and memory. The engines share the forkserver's process group; it exits
    once they all have. `fork=False` (or `$PXGRPC_FORK_ENGINES=0`) starts each engine as a
    fresh interpreter in its own process group instead, as does `restart_engines` (each
    engine then runs under its own supervisor).
    """

    name = "local"
    OPTIONS = ("python", "fork")

    def __init__(self, python: str | None = None, fork: bool = True) -> None:
        self.python = python
        self.fork = fork and sys.platform.startswith("linux")
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: list[str] = []
        self._count = 0  # engines started (a forkserver process stands for several)
        self._pids: list[int] = []  # when restored: processes of an earlier run

    def start(self, spec: EngineSpec) -> None:
        """Start `spec.n` engines."""
        python = self.python or spec.env.get("PXGRPC_PYTHON") or python_path()
        command = spec.engine_command(python, str(spec.connection_file), "--wait", "60")
        fork = self.fork and spec.env.get("PXGRPC_FORK_ENGINES", "1") not in ("0", "false", "no")
        # A supervised engine (restart_engines) is started afresh by its supervisor each time:
        # there is no warmed process to fork it from, so each gets its own interpreter.
        fork = fork and not spec.restart
        names = [str(spec.log_path(f"engine-{spec.index + i}")) for i in range(spec.n)]
        self._count += spec.n
        if fork and spec.n > 1:
            marker = "\0"  # (the log path may hold braces of its own: escape them, then number)
            template = str(spec.log_path(f"engine-{marker}")).replace("{", "{{").replace("}", "}}")
            server = [python, "-m", "pxgrpc.engine.forkserver", "--count", str(spec.n)]
            server += ["--first", str(spec.index), "--log", template.replace(marker, "{}")]
            server += ["--log-level", spec.log_level, "--"]
            log = spec.log_path(f"engine-forkserver-{spec.index}")
            self.logs.extend([*names, str(log)])
            self.processes.append(spawn([*server, *command[3:]], log, spec.env))
            return
        for name in names:
            self.logs.append(name)
            self.processes.append(spawn(command, pathlib.Path(name), spec.env))

    def expected(self) -> int:
        return self._count or len(self._pids)

    def controller_ip(self) -> str | None:
        return None

    def check(self) -> None:
        dead = [p for p in self.processes if p.poll() is not None]
        if dead:
            raise LaunchError(
                self.name,
                "this host",
                f"{len(dead)} engine(s) exited during start-up (status {dead[0].returncode})",
                self.last_stderr(),
            )

    def state(self) -> LauncherState:
        running = [p for p in self.processes if p.poll() is None]
        if not self.processes:
            count = sum(alive(p) for p in self._pids)
            return LauncherState(self.name, count > 0, detail=f"{count} engine processes")
        codes = [p.returncode for p in self.processes if p.returncode is not None]
        return LauncherState(self.name, bool(running), exit_code=codes[0] if codes and not running else None)

    def stop(self, grace: float = 3.0) -> None:
        reap(self.processes, grace)
        kill_groups(self._pids)
        self._pids = []

    def last_stderr(self, lines: int = TAIL_LINES) -> list[str]:
        for log in self.logs:
            found = tail(log, lines)
            if found:
                return found
        return []

    def local_processes(self) -> list[subprocess.Popen[bytes]]:
        return list(self.processes)

    def saved(self) -> dict[str, Any]:
        return {"name": self.name, "pids": [p.pid for p in self.processes] or self._pids, "logs": self.logs}

    @classmethod
    def restore(cls, saved: dict[str, Any]) -> LocalLauncher:
        launcher = cls()
        launcher._pids = [int(p) for p in saved.get("pids", [])]
        launcher.logs = list(saved.get("logs", []))
        return launcher
