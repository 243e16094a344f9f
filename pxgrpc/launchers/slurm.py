"""Engines as a Slurm job: `sbatch` a job whose one `srun` step runs them, `scancel` to stop.

Inside an allocation (`SLURM_JOB_ID` is set, e.g. under `salloc`) the engines start as one
`srun -n N` step of it instead. `slurm_args=` go to `sbatch` (or to that `srun`): partition,
account, time limit, `--overcommit` ... The engines read the engine-only connection file from
its path, so `~/.pxgrpc` (or `PXGRPC_DIR`) must be on a filesystem the compute nodes share, as
home directories on clusters usually are. The job's output (engines' stderr) goes to
`~/.pxgrpc/logs/CLUSTER-slurm-JOBID.log`.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from typing import Any

from pxgrpc.client.errors import PxError
from pxgrpc.launchers.base import (
    TAIL_LINES,
    EngineSpec,
    LaunchError,
    LauncherState,
    is_loopback,
    kill_groups,
    python_path,
    reap,
    run_tool,
    spawn,
    tail,
)
from pxgrpc.launchers.ssh import route_address

#: Job states after which the job runs no more.
FINISHED = {
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "TIMEOUT",
}
#: Seconds between two looks at the queue while waiting for the engines.
POLL_INTERVAL = 1.0
#: Seconds allowed to Slurm's short commands (sbatch, squeue, scancel).
TOOL_TIMEOUT = 30.0


class SlurmLauncher:
    """Starts `n` engines as one Slurm job (or job step), and cancels it to stop them."""

    name = "slurm"
    OPTIONS = ("slurm_args", "remote_python")

    def __init__(self, slurm_args: list[str] | None = None, remote_python: str | None = None) -> None:
        self.slurm_args = list(slurm_args or [])
        self.python = remote_python
        self.n = 0
        self.job_id = ""
        self.log = ""
        self.step: subprocess.Popen[bytes] | None = None  # the srun inside an allocation
        self.env: dict[str, str] | None = None
        self._step_pid = 0  # when restored: the srun of an earlier run
        self._last_look = 0.0
        self._last_state = ""

    def expected(self) -> int:
        return self.n

    def controller_ip(self) -> str | None:
        """Compute nodes are other hosts: this host's address on its default route."""
        try:
            address = route_address("192.0.2.1")  # TEST-NET: only the route is looked up
        except PxError:  # no default route: a single machine, where loopback does
            return None
        return None if is_loopback(address) else address

    # --- starting ---------------------------------------------------------------------------

    def start(self, spec: EngineSpec) -> None:
        self.n, self.env = spec.n, spec.env
        engine = spec.engine_command(self.python or python_path(), str(spec.engine_file))
        allocation = spec.env.get("SLURM_JOB_ID", "")
        if allocation:
            self.job_id = allocation
            self.log = str(spec.log_path(f"slurm-{allocation}-step"))
            command = ["srun", "-n", str(self.n), *self.slurm_args, *engine]
            try:
                self.step = spawn(command, spec.log_path(f"slurm-{allocation}-step"), spec.env)
            except OSError as exc:
                raise LaunchError(self.name, f"job {allocation}", f"cannot run srun: {exc}") from exc
            return
        self._submit(spec, engine)

    def _submit(self, spec: EngineSpec, engine: list[str]) -> None:
        tag = spec.cluster_id or "default"
        script = spec.log_path("slurm").with_suffix(".sh")
        log_pattern = spec.log_dir / f"{tag}-slurm-%j.log"
        script.write_text(
            "#!/bin/sh\n"
            f"#SBATCH --job-name=pxgrpc-{tag}\n"
            f"#SBATCH --ntasks={self.n}\n"
            f"#SBATCH --output={log_pattern}\n"
            f"exec srun {' '.join(shlex.quote(a) for a in engine)}\n"
        )
        result = run_tool(["sbatch", "--parsable", *self.slurm_args, str(script)], TOOL_TIMEOUT, spec.env)
        if result.returncode != 0:
            lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
            raise LaunchError(
                self.name,
                f"sbatch {' '.join(self.slurm_args)}".strip(),
                f"sbatch refused the job (status {result.returncode})",
                lines[-TAIL_LINES:],
            )
        self.job_id = result.stdout.strip().split(";")[0]
        self.log = str(log_pattern).replace("%j", self.job_id)

    # --- watching ---------------------------------------------------------------------------

    def job_state(self) -> tuple[str, str]:
        """The job's state and pending reason from squeue (sacct once it left the queue);
        ('', '') when Slurm no longer knows it."""
        if not self.job_id:
            return "", ""
        found = run_tool(["squeue", "-h", "-j", self.job_id, "-o", "%T %r"], TOOL_TIMEOUT, self.env)
        words = found.stdout.split(maxsplit=1) if found.returncode == 0 else []
        if words:
            return words[0], words[1].strip() if len(words) > 1 else ""
        past = run_tool(["sacct", "-n", "-X", "-P", "-j", self.job_id, "-o", "State"], TOOL_TIMEOUT, self.env)
        state = past.stdout.split()[0] if past.returncode == 0 and past.stdout.split() else ""
        return state, ""

    def check(self) -> None:
        if self.step is not None:
            if self.step.poll() is not None:
                raise LaunchError(
                    self.name,
                    f"job {self.job_id}",
                    f"srun exited with status {self.step.returncode} before the engines registered",
                    self.last_stderr(),
                )
            return
        now = time.monotonic()
        if now - self._last_look < POLL_INTERVAL:
            return
        self._last_look = now
        state, _ = self.job_state()
        self._last_state = state
        if state == "" or state.split()[0] in FINISHED:
            raise LaunchError(
                self.name,
                f"job {self.job_id}",
                f"the job ended ({state or 'gone from the queue'}) before the engines registered",
                self.last_stderr(),
            )

    def state(self) -> LauncherState:
        if self.step is not None:
            code = self.step.poll()
            return LauncherState(self.name, code is None, code, self.job_id, "srun step")
        state, reason = self.job_state()
        detail = f"{state} ({reason})" if reason and reason != "None" else state or "not in the queue"
        running = bool(state) and state not in FINISHED
        return LauncherState(self.name, running, None, self.job_id, detail)

    def last_stderr(self, lines: int = TAIL_LINES) -> list[str]:
        return tail(self.log, lines) if self.log else []

    def local_processes(self) -> list[subprocess.Popen[bytes]]:
        return [self.step] if self.step is not None else []

    # --- stopping ---------------------------------------------------------------------------

    def stop(self, grace: float = 3.0) -> None:
        """Let the job end by itself for `grace` seconds, then scancel it and wait until it
        has left the queue."""
        if self.step is not None or self._step_pid:
            # srun passes SIGTERM on to every task of the step; the allocation stays the user's.
            reap([self.step] if self.step is not None else [], grace)
            kill_groups([self._step_pid] if self._step_pid else [])
            self.step, self._step_pid = None, 0
            return
        if not self.job_id:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self._listed():
            time.sleep(0.2)
        if self._listed():
            result = run_tool(["scancel", self.job_id], TOOL_TIMEOUT, self.env)
            if result.returncode != 0 and self._listed():
                raise LaunchError(
                    self.name, f"job {self.job_id}", "scancel failed", result.stderr.splitlines()
                )
        deadline = time.monotonic() + TOOL_TIMEOUT
        while self._listed():
            if time.monotonic() > deadline:
                raise LaunchError(
                    self.name, f"job {self.job_id}", "the job is still in the queue after scancel"
                )
            time.sleep(0.2)
        self.job_id = ""

    def _listed(self) -> bool:
        found = run_tool(["squeue", "-h", "-j", self.job_id, "-o", "%T"], TOOL_TIMEOUT, self.env)
        return found.returncode == 0 and bool(found.stdout.strip())

    # --- saving -----------------------------------------------------------------------------

    def saved(self) -> dict[str, Any]:
        step = self.step.pid if self.step is not None else self._step_pid
        return {"name": self.name, "job_id": self.job_id, "n": self.n, "log": self.log, "srun_pid": step}

    @classmethod
    def restore(cls, saved: dict[str, Any]) -> SlurmLauncher:
        launcher = cls()
        launcher.job_id, launcher.n, launcher.log = str(saved["job_id"]), int(saved["n"]), str(saved["log"])
        launcher._step_pid = int(saved.get("srun_pid", 0))
        return launcher
