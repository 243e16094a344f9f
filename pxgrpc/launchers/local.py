"""Engines as child processes of this machine (the default launcher)."""

from __future__ import annotations

import subprocess
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
    """`n` engine processes here, each in its own process group, logging to the cluster's log
    directory. They use the full connection file and wait for it to appear, so they can start
    alongside the controller."""

    name = "local"
    OPTIONS = ("python",)

    def __init__(self, python: str | None = None) -> None:
        self.python = python
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: list[str] = []
        self._pids: list[int] = []  # when restored: processes of an earlier run

    def start(self, spec: EngineSpec) -> None:
        """Start `spec.n` engines."""
        python = self.python or spec.env.get("PXGRPC_PYTHON") or python_path()
        command = spec.engine_command(python, str(spec.connection_file), "--wait", "60")
        for i in range(spec.n):
            log = spec.log_path(f"engine-{spec.index + i}")
            self.logs.append(str(log))
            self.processes.append(spawn(command, log, spec.env))

    def expected(self) -> int:
        return len(self.processes) or len(self._pids)

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
