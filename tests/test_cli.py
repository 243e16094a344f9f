"""The command-line tools, run as a user would run them."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

import pxgrpc as ipp

pytestmark = pytest.mark.timeout(90)


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, check=check)


@pytest.mark.parametrize("command", ["pxgrpc", "pxgrpc-controller", "pxgrpc-engine"])
def test_every_command_has_help(command: str) -> None:
    out = run(command, "--help").stdout
    assert "usage:" in out and "--log-level" in out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_cluster_start_status_stop(pxgrpc_home: str) -> None:
    cluster_id = "cli-test"
    try:
        started = run("pxgrpc", "cluster", "start", "-n", "2", "--cluster-id", cluster_id)
        assert "cluster ready" in started.stdout
        conn = pathlib.Path(pxgrpc_home) / f"controller-{cluster_id}.json"
        assert conn.stat().st_mode & 0o777 == 0o600
        status = run("pxgrpc", "cluster", "status", "--cluster-id", cluster_id).stdout
        assert "2 engines" in status and "idle" in status
        with ipp.Client(cluster_id=cluster_id) as rc:
            assert rc[:].apply_sync(lambda: "hello") == ["hello", "hello"]
        state = json.loads((pathlib.Path(pxgrpc_home) / f"cluster-{cluster_id}.json").read_text())
        pids = [state["controller_pid"], *state["engine_pids"]]
    finally:
        stopped = run("pxgrpc", "cluster", "stop", "--cluster-id", cluster_id, check=False)
    assert "cluster stopped" in stopped.stdout
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids)
    logs = list((pathlib.Path(pxgrpc_home) / "logs").glob(f"{cluster_id}-*.log"))
    assert all(p.stat().st_size for p in logs), logs  # (the empty ones went with the cluster)
    missing = run("pxgrpc", "cluster", "status", "--cluster-id", cluster_id, check=False)
    assert missing.returncode == 1 and "no controller found" in missing.stderr


def test_cluster_start_restart_engines_replaces_a_killed_engine_and_stop_leaves_nothing(
    pxgrpc_home: str,
) -> None:
    cluster_id = "cli-restart"
    replaced: set[int] = set()
    try:
        run("pxgrpc", "cluster", "start", "-n", "2", "--cluster-id", cluster_id, "--restart-engines")
        with ipp.Client(cluster_id=cluster_id) as rc:
            first = {e["id"]: e["pid"] for e in rc.engines}
            assert sorted(first) == [0, 1]
            os.kill(first[0], signal.SIGKILL)
            deadline = time.monotonic() + 30
            while True:
                now = {e["id"]: e["pid"] for e in rc.engines}
                if sorted(now) == [0, 1] and now[0] != first[0]:
                    break
                assert time.monotonic() < deadline, now
                time.sleep(0.05)
            assert now[1] == first[1]
            replaced = {now[0], now[1]}
            assert rc[:].apply_sync(lambda: "serving") == ["serving", "serving"]
        state = json.loads((pathlib.Path(pxgrpc_home) / f"cluster-{cluster_id}.json").read_text())
        supervisors = [*state["engine_pids"]]
    finally:
        stopped = run("pxgrpc", "cluster", "stop", "--cluster-id", cluster_id, check=False)
    assert "cluster stopped" in stopped.stdout
    pids = [*replaced, *supervisors]
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids)


def test_engine_without_a_controller_says_so(pxgrpc_home: str) -> None:
    result = run(sys.executable, "-m", "pxgrpc.engine", "--cluster-id", "nothing-here", check=False)
    assert result.returncode == 2 and "no controller found" in result.stderr


def test_controller_refuses_a_public_bind_without_tls() -> None:
    result = run("pxgrpc-controller", "--ip", "0.0.0.0", check=False)
    assert result.returncode == 2 and "--tls auto" in result.stderr


def test_a_script_that_forgets_to_stop_its_cluster_leaves_no_processes(pxgrpc_home: str) -> None:
    script = (
        "import pxgrpc as ipp, json\n"
        "c = ipp.Cluster(n=1)\n"
        "rc = c.start_and_connect_sync()\n"
        "print(json.dumps([c.controller.pid, *[p.pid for p in c.engines]]))\n"
    )
    result = run(sys.executable, "-c", script)
    pids = json.loads(result.stdout.strip().splitlines()[-1])
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids)
