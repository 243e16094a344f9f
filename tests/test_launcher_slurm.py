"""The slurm launcher against a real single-node Slurm (slurmctld, slurmd, munged from Debian's
slurm-wlm and munge), started by this module with its own key, socket, ports and state in a
temporary directory, and stopped in `finally`. Needs root; skips, saying why, without the tools.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_launchers import engine_processes

import pxgrpc as ipp
from pxgrpc.launchers import LaunchError

pytestmark = pytest.mark.timeout(150)

TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo", "srun")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _slurm_conf(root: Path, node: str) -> str:
    return f"""ClusterName=pxtest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
NodeName={node} NodeAddr=127.0.0.1 CPUs=8 State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


def _daemon(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=out, start_new_session=True)


def _our_jobs() -> list[str]:
    return subprocess.run(
        ["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=30
    ).stdout.split()


def unavailable() -> str | None:
    """Why this machine cannot run a test Slurm, or None."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (slurm-wlm, munge)"
    if os.geteuid() != 0:
        return "slurmd must run as root"
    return None


@contextlib.contextmanager
def single_node_slurm() -> Iterator[Path]:
    """A one-node Slurm (8 CPUs declared on this machine, so 4 engines fit), with SLURM_CONF
    pointing the slurm commands at it until it is stopped; yields its directory."""
    root = Path(tempfile.mkdtemp(prefix="pxgrpc-slurm-"))
    os.chmod(root, 0o755)
    daemons: list[subprocess.Popen[bytes]] = []
    saved = os.environ.get("SLURM_CONF")
    try:
        for sub in ("munge", "state", "spool"):
            (root / sub).mkdir(mode=0o755)
        key = root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        m = root / "munge"
        munged = ["munged", "-F", "--force", f"--key-file={key}", f"--socket={m}/munge.socket"]
        munged += [f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log", f"--seed-file={m}/seed"]
        daemons.append(_daemon(munged, root / "munged.out"))
        node = socket.gethostname().split(".")[0]
        conf = root / "slurm.conf"
        conf.write_text(_slurm_conf(root, node))
        os.environ["SLURM_CONF"] = str(conf)
        deadline = time.monotonic() + 30
        while not (m / "munge.socket").exists():
            assert time.monotonic() < deadline, (root / "munged.out").read_text()
            time.sleep(0.05)
        daemons.append(_daemon(["slurmctld", "-D", "-i", "-f", str(conf)], root / "slurmctld.out"))
        daemons.append(_daemon(["slurmd", "-D", "-f", str(conf), "-N", node], root / "slurmd.out"))
        deadline = time.monotonic() + 60
        while True:
            state = subprocess.run(
                ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30
            ).stdout.strip()
            if state == "idle":
                break
            assert time.monotonic() < deadline, f"the slurm node is {state!r}, not idle: see {root}/*.log"
            time.sleep(0.2)
        yield root
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            for job in _our_jobs():
                subprocess.run(["scancel", job], timeout=30, check=False)
        for proc in reversed(daemons):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def slurm() -> Iterator[Path]:
    reason = unavailable()
    if reason is not None:
        pytest.skip(f"slurm test skipped: {reason}")
    with single_node_slurm() as root:
        yield root


def test_slurm_engines_run_the_seed_workflow_and_stop_leaves_no_job(slurm: Path) -> None:
    cluster = ipp.Cluster(n=4, engines="slurm", timeout=60)
    try:
        rc = cluster.start_and_connect_sync()
        launched = cluster.launchers[0].state()
        assert launched.job_id and launched.running and launched.detail == "RUNNING"
        assert _our_jobs() == [launched.job_id]
        assert sorted(rc[:].apply_sync(lambda: int(__import__("os").environ["SLURM_PROCID"]))) == [0, 1, 2, 3]
        dv = rc[:]
        dv.execute("import numpy as np\na = np.arange(4)", block=True)
        dv.push({"b": 10}, block=True)
        assert dv.apply_sync(ipp.interactive(lambda: int(a.sum()) + b)) == [16] * 4  # type: ignore[name-defined] # noqa: F821
        dv.scatter("part", np.arange(10), block=True)
        assert np.array_equal(dv.gather("part", block=True), np.arange(10))
        assert rc.load_balanced_view().map_sync(lambda x: x * x, range(8)) == [x * x for x in range(8)]
    finally:
        cluster.stop_cluster_sync()
    assert _our_jobs() == []
    assert engine_processes(cluster.cluster_id) == []


def test_a_job_sbatch_refuses_fails_the_start_with_its_reason(slurm: Path) -> None:
    cluster = ipp.Cluster(n=2, engines="slurm", slurm_args=["--partition=nope"], timeout=30)
    with pytest.raises(LaunchError) as info, cluster:
        pass
    message = str(info.value)
    assert message.startswith("slurm launcher, sbatch --partition=nope: sbatch refused the job")
    assert "Invalid partition name specified" in message
    assert cluster.controller is None and _our_jobs() == []


def test_a_job_that_does_not_start_in_time_fails_naming_it_and_is_cancelled(slurm: Path) -> None:
    cluster = ipp.Cluster(n=2, engines="slurm", slurm_args=["--begin=now+1hour"], timeout=4)
    with pytest.raises(LaunchError) as info, cluster:
        pass
    message = str(info.value)
    assert message.startswith("slurm launcher, job ") and "PENDING (BeginTime)" in message
    assert "only 0 of 2 engines registered within 4 s" in message
    assert _our_jobs() == []


def test_cli_status_shows_the_job_and_stop_cancels_it(slurm: Path, pxgrpc_home: str) -> None:
    common = ["--cluster-id", "slurm-cli"]
    try:
        started = subprocess.run(
            ["pxgrpc", "cluster", "start", *common, "--engines", "slurm", "-n", "2", "--timeout", "60"],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert started.returncode == 0, started.stderr
        status = subprocess.run(
            ["pxgrpc", "cluster", "status", *common], capture_output=True, text=True, timeout=30
        ).stdout
        [job] = _our_jobs()
        assert f"launcher slurm, job {job}, running, RUNNING" in status
    finally:
        stopped = subprocess.run(
            ["pxgrpc", "cluster", "stop", *common], capture_output=True, text=True, timeout=90
        )
    assert "cluster stopped" in stopped.stdout
    assert _our_jobs() == []
