"""Many engines on one host: forked from one warmed process, answering all at once, stopped
without leftovers (gRPC's fork rule enforced); a broadcast that reaches them all from one
upload and one shared copy, each engine's value still its own."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import psutil
import pytest

import pxgrpc as ipp
from pxgrpc import messages, sharedmem

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


@pytest.mark.parametrize("opt_out", [{"fork_engines": False}, {"env": {"PXGRPC_FORK_ENGINES": "0"}}])
def test_engines_can_be_started_as_fresh_interpreters_instead(make_cluster, opt_out) -> None:  # type: ignore[no-untyped-def]
    cluster, rc = make_cluster(n=2, **opt_out)
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


# --- broadcast ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rc16() -> Iterator[ipp.Client]:
    cluster = ipp.Cluster(n=16)
    try:
        yield cluster.start_and_connect_sync(timeout=120)
    finally:
        cluster.stop_cluster_sync()


def test_a_broadcast_value_is_identical_on_every_engine_and_each_engines_own(rc16: ipp.Client) -> None:
    dv = rc16[:]
    sent = np.arange(1_000_000, dtype=np.float64)
    dv.push({"arr": sent}, block=True)
    dv.execute("total = float(arr.sum())", block=True)
    assert dv.pull("total", block=True) == [float(sent.sum())] * 16
    # An engine that writes to its copy changes no other engine's.
    rc16[3].execute("arr[:] = -1", block=True)
    dv.execute("second = float(arr[1])", block=True)
    assert dv.pull("second", block=True) == [1.0, 1.0, 1.0, -1.0, *[1.0] * 12]
    dv.execute("del arr", block=True)


def test_the_sender_changing_its_array_after_push_changes_nothing_remote(rc16: ipp.Client) -> None:
    dv = rc16[:]
    sent = np.ones(1 << 20)
    dv.push({"arr": sent}, block=True)
    sent[:] = 5
    dv.execute("total = float(arr.sum())", block=True)
    assert dv.pull("total", block=True) == [float(1 << 20)] * 16
    dv.execute("del arr", block=True)


def test_engines_on_the_controllers_host_map_one_shared_copy_of_a_broadcast(rc16: ipp.Client) -> None:
    def mapped_blob_files(x: np.ndarray) -> tuple[int, float]:
        with open("/proc/self/maps") as f:
            return sum("pxgrpc-blob" in line for line in f), float(x[-1])

    big = np.arange(1 << 20, dtype=np.float64)  # (apply with a big argument: the same way)
    found = rc16[:].apply_sync(mapped_blob_files, big)
    assert all(count >= 1 for count, _ in found) and {last for _, last in found} == {float(big[-1])}


def test_scatter_and_gather_keep_their_order_over_16_engines(rc16: ipp.Client) -> None:
    dv = rc16[:]
    dv.scatter("part", list(range(1001)), block=True)
    assert dv.pull("part", block=True)[0] == list(range(63))
    assert dv.gather("part", block=True) == list(range(1001))


def test_a_shared_blob_that_names_another_file_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    shared = sharedmem.SharedFile(4096)
    try:
        shared.write_chunks([memoryview(b"x" * 4096)])
        header = messages.BlobHeader(blob_id="b", size=4096, shared=shared.describe())
        assert bytes(sharedmem.map_blob("b", header).slice(messages.BlobSlice(offset=0, length=3))) == b"xxx"
        other = tmp_path / "other"
        other.write_bytes(b"\0" * 8192)
        header.shared.path = str(other)
        with pytest.raises(sharedmem.SharedBlobUnusable, match="nonce"):
            sharedmem.map_blob("b", header)
        header.shared.path = str(tmp_path / "missing")
        with pytest.raises(sharedmem.SharedBlobUnusable, match="cannot open"):
            sharedmem.map_blob("b", header)
    finally:
        shared.close()
