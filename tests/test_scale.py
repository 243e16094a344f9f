"""Many engines on one host: forked from one warmed process, answering all at once, stopped
without leftovers; gRPC's fork rule enforced."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

pytestmark = pytest.mark.timeout(240)


def test_32_forked_engines_answer_an_apply_to_all_and_stop_without_leftovers(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster, rc = make_cluster(n=32)
    assert len(rc.ids) == 32
    pids = rc[:].apply_sync(os.getpid)
    assert len(set(pids)) == 32
    # One forkserver started them all: they are its children, in its process group.
    [server] = cluster.engines
    assert {psutil.Process(pid).ppid() for pid in pids} == {server.pid}
    assert {os.getpgid(pid) for pid in pids} == {server.pid}
    # Each child has random state of its own (numpy's is not reseeded at fork by itself).
    assert len(set(rc[:].apply_sync(lambda: float(__import__("numpy").random.random())))) == 32
    cluster.stop_cluster_sync()
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(p) for p in [*pids, server.pid]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids)


def test_engines_can_be_started_as_fresh_interpreters_instead(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster, rc = make_cluster(n=2, fork_engines=False)
    assert len(cluster.engines) == 2
    assert sorted(rc[:].apply_sync(os.getpid)) == sorted(p.pid for p in cluster.engines)


def test_the_forkserver_refuses_to_fork_once_grpc_runs_threads() -> None:
    script = (
        "import grpc, sys\n"
        "from pxgrpc.engine import forkserver\n"
        "forkserver.warm_up()\n"
        "assert forkserver.foreign_threads() == [], forkserver.foreign_threads()\n"
        "channel = grpc.insecure_channel('127.0.0.1:9')\n"
        "try:\n"
        "    grpc.channel_ready_future(channel).result(timeout=0.5)\n"
        "except grpc.FutureTimeoutError:\n"
        "    pass\n"
        "try:\n"
        "    forkserver.fork_engines(2, '/dev/null', ['--help'])\n"
        "except RuntimeError as exc:\n"
        "    print(exc)\n"
        "    sys.exit(0)\n"
        "sys.exit('forked with gRPC threads running')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "forking now would break gRPC" in result.stdout and "grpc_global_tim" in result.stdout


def test_a_forkserver_whose_engines_fail_reports_their_status(tmp_path) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "engine-{}.log"
    command = [sys.executable, "-m", "pxgrpc.engine.forkserver", "--count", "3", "--log", str(log)]
    result = subprocess.run([*command, "--", "--no-such-flag"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    for i in range(3):
        assert "unrecognized arguments: --no-such-flag" in (tmp_path / f"engine-{i}.log").read_text()
