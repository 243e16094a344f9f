"""Same-host transfers through shared memory: a client and an engine on one host move large
arrays as memfds (the engine maps the client's file on a push, writes into one on a pull), each
side's value stays its own, anything that cannot map falls back to bytes, and nothing leaks."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

import grpc
import numpy as np
import pytest

from pxgrpc import blobstream, sharedmem, wire
from pxgrpc.security.tokens import auth_metadata
from tests.conftest import lanes_open

pytestmark = pytest.mark.timeout(120)

MB = 1 << 20


def _memfd_mappings(pid: int | str = "self") -> int:
    """How many shared-memory blobs a process maps."""
    with open(f"/proc/{pid}/maps") as maps:
        return sum("pxgrpc-blob" in line for line in maps)


def _fds(pid: int | str = "self") -> dict[str, str]:
    """A process's open files: fd -> what it is."""
    found = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):  # (closed meanwhile)
            found[fd] = os.readlink(f"/proc/{pid}/fd/{fd}")
    return found


def _memfds(pid: int | str = "self") -> list[str]:
    return [fd for fd, target in _fds(pid).items() if "pxgrpc-blob" in target]


def test_same_host_push_and_pull_go_through_shared_memory_and_stay_private(make_cluster: Any) -> None:
    _, rc = make_cluster(n=1)
    e0 = rc[0]
    pid = e0.apply_sync(os.getpid)
    assert rc._transport._datapath.shares_memory(rc.engines[0]["data_url"])
    data = np.random.default_rng(1).random(3 * MB)
    before = _memfd_mappings(pid)
    e0.push({"a": data}, block=True)
    assert _memfd_mappings(pid) == before + 1  # the engine's value is a mapping of the client's file
    kept = data.copy()
    data[:] = -1  # the client changes its array after the push: the engine's stays as it was
    e0.execute("head = a[:3].copy()", block=True)
    assert np.array_equal(e0.pull("head", block=True), kept[:3])
    e0.execute("a[0] = 1e9; a[-1] = -1e9", block=True)  # the engine changes its own copy
    pulled = e0.pull("a", block=True)
    assert pulled[0] == 1e9 and pulled[-1] == -1e9 and np.array_equal(pulled[1:-1], kept[1:-1])
    assert _memfd_mappings() >= 1  # the pulled array is a mapping of a file the engine wrote
    pulled[1] = 7.0  # the client's pulled array is its own, and writable
    e0.execute("second = float(a[1])", block=True)
    assert e0.pull("second", block=True) == kept[1]
    e0.execute("a[2] = 5.0", block=True)
    assert pulled[2] == kept[2]
    assert np.array_equal(data, np.full_like(data, -1))  # the push left the client's array alone


def test_scatter_and_gather_of_arrays_between_client_and_engines_on_one_host(make_cluster: Any) -> None:
    _, rc = make_cluster(n=2)
    data = np.arange(6 * MB, dtype=np.float64)
    rc[:].scatter("part", data, block=True)
    pids = rc[:].apply_sync(os.getpid)
    assert all(_memfd_mappings(pid) >= 1 for pid in pids)
    mappings = _memfd_mappings()
    gathered = rc[:].gather("part", block=True)
    assert np.array_equal(gathered, data)
    # The engines wrote their parts into one file of the client's, mapped as the joined array.
    assert getattr(gathered.base, "whole_buffer", False) and _memfd_mappings() == mappings + 1
    gathered[0] = -1.0  # the client's own
    rc[:].execute("part *= 2", block=True)
    again = rc[:].gather("part", block=True)
    assert np.array_equal(again, data * 2) and gathered[0] == -1.0 and gathered[1] == 1.0


def test_a_gather_whose_part_comes_as_bytes_is_still_built_in_place(
    make_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, rc = make_cluster(n=2)
    data = np.arange(3 * MB, dtype=np.int64).reshape(-1, 3)
    rc[:].scatter("part", data, block=True)
    datapath = rc._transport._datapath
    original = datapath.download
    engine_1 = rc.engines[1]["data_url"]

    async def engine_1_sends_bytes(url: str, blob_id: str, into: Any = None, region: Any = None) -> Any:
        return await original(url, blob_id, into, None if url == engine_1 else region)

    monkeypatch.setattr(datapath, "download", engine_1_sends_bytes)
    gathered = rc[:].gather("part", block=True)
    assert np.array_equal(gathered, data) and getattr(gathered.base, "whole_buffer", False)


def test_with_shared_memory_off_arrays_travel_as_bytes(
    make_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PXGRPC_SHARED_MEMORY", "off")
    _, rc = make_cluster(n=1)
    assert rc.engines[0]["host_key"] == ""
    e0 = rc[0]
    pid = e0.apply_sync(os.getpid)
    data = np.random.default_rng(2).random(2 * MB)
    e0.push({"a": data}, block=True)
    assert _memfd_mappings(pid) == 0
    before = _memfd_mappings()
    assert np.array_equal(e0.pull("a", block=True), data)
    assert _memfd_mappings() == before


def _unshare_unavailable() -> str | None:
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return "needs root on Linux (a PID namespace)"
    if shutil.which("unshare") is None:
        return "needs unshare (util-linux)"
    return None


@pytest.mark.skipif(_unshare_unavailable() is not None, reason=str(_unshare_unavailable()))
def test_an_engine_that_cannot_open_the_clients_files_gets_bytes(make_cluster: Any) -> None:
    """An engine in another PID namespace has the client's boot id but not its /proc/PID/fd:
    a push's file cannot be opened (FAILED_PRECONDITION: the client sends the bytes and stops
    trying), nor a pull's (the engine streams the bytes)."""
    cluster, rc = make_cluster(n=1)
    engine = subprocess.Popen(
        [
            *("unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "pxgrpc.engine"),
            *("--file", str(cluster.connection_file)),
        ],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        rc.wait_for_engines(2, timeout=60)
        e1 = rc[1]
        assert e1.apply_sync(os.getpid) == 1  # (it is the first process of its PID namespace)
        url = rc.engines[1]["data_url"]
        datapath = rc._transport._datapath
        assert datapath.shares_memory(url)  # (same boot id: the client tries)
        data = np.random.default_rng(3).random(2 * MB)
        before = _memfd_mappings()
        e1.push({"a": data}, block=True)
        assert not datapath.shares_memory(url)  # the engine could not map it: bytes from now on
        e1.execute("b = a * 2", block=True)
        datapath._not_sharing.clear()  # a pull tries again: the engine streams the bytes
        assert np.array_equal(e1.pull("b", block=True), data * 2)
        assert _memfd_mappings() == before
        assert np.array_equal(e1.pull("a", block=True), data)
    finally:
        os.killpg(engine.pid, signal.SIGKILL)
        engine.wait(timeout=30)


def test_many_transfers_leak_no_files_and_no_mappings(make_cluster: Any) -> None:
    _, rc = make_cluster(n=1)
    e0 = rc[0]
    pid = e0.apply_sync(os.getpid)
    data = np.random.default_rng(4).random(3 * MB // 16)  # 1.5 MB: just over the threshold
    e0.push({"a": data}, block=True)
    e0.pull("a", block=True)
    counts = (len(_fds()), len(_fds(pid)))
    for _ in range(500):  # 1000 transfers
        e0.push({"a": data}, block=True)
        pulled = e0.pull("a", block=True)
    assert np.array_equal(pulled, data)
    del pulled
    deadline = time.monotonic() + 10
    while (_memfds() or _memfds(pid)) and time.monotonic() < deadline:
        time.sleep(0.05)  # (the last transfer's file closes right after it)
    assert _memfds() == [] and _memfds(pid) == []
    # Other files may come and go (gRPC's sockets), but they do not pile up.
    assert len(_fds()) <= counts[0] + 2 and len(_fds(pid)) <= counts[1] + 2, (_fds(), _fds(pid))
    e0.execute("pass", block=True)  # (a value a push replaced is freed once the push is answered)
    deadline = time.monotonic() + 10
    while _memfd_mappings(pid) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _memfd_mappings(pid) == 1  # `a`, the last push's
    assert _memfd_mappings() <= 2  # (the last results the client keeps)


def test_a_replaced_large_shared_array_is_freed_off_the_main_thread_other_values_in_it(
    make_cluster: Any,
) -> None:
    """Freeing the last mapping of a shared file frees its pages (ms for large ones): the engine
    does it in a thread of its own for a large array, not before its next task. Any other value
    a push replaces (a smaller array, say) is freed in the main thread after the answer; a
    value with a `__del__` is freed there, where that may expect to run."""
    _, rc = make_cluster(n=1)
    e0 = rc[0]
    pid = e0.apply_sync(os.getpid)

    def threads() -> list[str]:
        return [t.name for t in __import__("threading").enumerate()]

    def mappings_left() -> int:
        deadline = time.monotonic() + 10
        while _memfd_mappings(pid) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)  # (a replaced value is freed right after the push's answer)
        return _memfd_mappings(pid)

    small = np.random.default_rng(5).random(MB // 4)  # 2 MB: shared, freed in the main thread
    for _ in range(3):
        e0.push({"a": small}, block=True)
    assert mappings_left() == 1  # the last push's
    assert "pxgrpc-reaper" not in e0.apply_sync(threads)
    data = np.random.default_rng(5).random(2 * MB)  # 16 MB: freed by the reaper
    for _ in range(3):
        e0.push({"a": data}, block=True)
    assert mappings_left() == 1
    assert "pxgrpc-reaper" in e0.apply_sync(threads)
    e0.execute(
        "import threading\nfreed = []\n"
        "class Noted:\n    def __del__(self):\n        freed.append(threading.current_thread().name)\n"
        "a = Noted()",
        block=True,
    )
    e0.push({"a": data}, block=True)
    e0.push({"a": 1}, block=True)
    assert e0.pull("freed", block=True) == ["MainThread"]
    assert e0.pull("a", block=True) == 1


def _upload_shared(rc: Any, header: wire.pb.BlobHeader, *extra: bytes) -> grpc.RpcError:
    url = rc.engines[0]["data_url"]
    with grpc.insecure_channel(url) as channel:
        upload = channel.stream_unary(f"/{wire.ENGINE_DATA_SERVICE}/Upload")
        messages = [wire.pb.BlobChunk(header=header).SerializeToString(), *extra]
        with pytest.raises(grpc.RpcError) as caught:
            upload(iter(messages), metadata=auth_metadata(rc._transport.info.token), timeout=20)
    return caught.value


def test_bad_shared_uploads_are_refused_with_the_reason_and_the_engine_goes_on(make_cluster: Any) -> None:
    _, rc = make_cluster(n=1)
    file = sharedmem.SharedFile(MB)
    try:
        good = file.describe()
        missing = _upload_shared(
            rc,
            wire.pb.BlobHeader(
                blob_id="gone",
                size=MB,
                shared=wire.pb.SharedBlob(path="/proc/self/fd/999999", nonce=good.nonce, offset=good.offset),
            ),
        )
        assert missing.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "cannot open" in (missing.details() or "")
        wrong = wire.pb.SharedBlob(path=good.path, nonce=b"x" * 16, offset=good.offset)
        forged = _upload_shared(rc, wire.pb.BlobHeader(blob_id="forged", size=MB, shared=wrong))
        assert forged.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "nonce" in (forged.details() or "")
        truncated = _upload_shared(rc, wire.pb.BlobHeader(blob_id="short", size=2 * MB, shared=good))
        assert truncated.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "shorter" in (truncated.details() or "")
        trailing = _upload_shared(
            rc, wire.pb.BlobHeader(blob_id="extra", size=MB, shared=good), blobstream.encode_data_chunk(b"x")
        )
        assert trailing.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "BlobChunk.data" in (trailing.details() or "")
    finally:
        file.close()
    data = np.random.default_rng(5).random(2 * MB)
    rc[0].push({"a": data}, block=True)
    assert np.array_equal(rc[0].pull("a", block=True), data)


def test_the_controller_refuses_a_shared_upload(make_cluster: Any) -> None:
    _, rc = make_cluster(n=1)
    shared = wire.pb.SharedBlob(path="/x", nonce=b"n" * 16, offset=4096)
    header = wire.pb.BlobChunk(header=wire.pb.BlobHeader(blob_id="mine", size=MB, shared=shared))
    info = rc._transport.info
    with grpc.insecure_channel(info.url) as channel:
        upload = channel.stream_unary(f"/{wire.CONTROLLER_SERVICE}/Upload")
        with pytest.raises(grpc.RpcError) as caught:
            upload(iter([header.SerializeToString()]), metadata=auth_metadata(info.token), timeout=20)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "BlobHeader.shared" in (caught.value.details() or "")


def test_a_pull_whose_file_the_engine_cannot_trust_comes_as_bytes(
    make_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, rc = make_cluster(n=1)
    original = sharedmem.SharedFile.describe

    def wrong_nonce_for_pulls(self: sharedmem.SharedFile) -> wire.pb.SharedBlob:
        described = original(self)
        if self.size == 0:  # (a pull's empty file, not a push's)
            described.nonce = b"x" * len(described.nonce)
        return described

    monkeypatch.setattr(sharedmem.SharedFile, "describe", wrong_nonce_for_pulls)
    data = np.random.default_rng(6).random(2 * MB)
    rc[0].push({"a": data}, block=True)
    before = _memfd_mappings()
    assert np.array_equal(rc[0].pull("a", block=True), data)
    assert _memfd_mappings() == before


@pytest.mark.parametrize("lanes", ["on", "off"])
def test_a_broadcast_to_engines_on_the_controllers_host_travels_with_its_tasks(
    make_cluster: Any, monkeypatch: pytest.MonkeyPatch, lanes: str
) -> None:
    """With task lanes the client writes the value once into a file of its own and names it in
    each task it sends on them; without, it uploads the value once to the controller, which
    makes a shared copy and names it in each task. Either way the engines map it without
    asking anyone."""
    monkeypatch.setenv("PXGRPC_TASK_LANE", lanes)
    _, rc = make_cluster(n=3)
    dv = rc[:]
    if lanes == "on":
        lanes_open(rc, shared_memory=True)
    files_before = len(_memfds())
    data = np.random.default_rng(7).random(MB)
    dv.push({"b": data}, block=True)
    assert len(_memfds()) == files_before  # (the client's file, if any, is closed once all have it)

    def sources() -> dict[str, int]:
        from pxgrpc.engine import blobtransfer

        return dict(blobtransfer.sources)

    assert dv.apply_sync(sources) == [{"task": 1}] * 3
    dv.execute("b[0] = -1.0", block=True)  # each engine's value is its own
    heads = dv.pull("b", block=True)
    assert all(h[0] == -1.0 and np.array_equal(h[1:], data[1:]) for h in heads)
    assert data[0] != -1.0
