"""The first transfer on a fresh cluster starts warm: data channels connected ahead, fresh
receive buffers faulted in ahead of the writes (behaviour only; the speed is the bench's)."""

from __future__ import annotations

import mmap
import resource
import sys
import time
from typing import Any

import numpy as np
import pytest

from pxgrpc import blobstream, memory

pytestmark = pytest.mark.timeout(60)

MB = 1 << 20


def _connected(rc: Any, url: str) -> bool:
    datapath = rc._transport._datapath

    async def ask() -> bool:
        return bool(datapath.connected(url))

    return bool(rc._transport.io.run(ask(), 5))


def test_the_client_connects_to_the_data_endpoints_before_the_first_transfer(make_cluster: Any) -> None:
    _, rc = make_cluster(n=2)
    urls = [e["data_url"] for e in rc.engines]
    deadline = time.monotonic() + 20
    while not all(_connected(rc, url) for url in urls):
        assert time.monotonic() < deadline, "data channels not connected before any transfer"
        time.sleep(0.05)
    data = np.arange(3 * MB // 8, dtype=np.float64)
    rc[0].push({"a": data}, block=True)  # the first transfer uses the channel already there
    assert np.array_equal(rc[0].pull("a", block=True), data)
    assert set(rc._transport._datapath._channels) == set(urls)


def _wait_for_prefaulter() -> None:
    pool = memory._prefaulter
    if pool is not None:
        pool.submit(lambda: None).result(10)


def test_prefaulting_maps_a_fresh_buffer_before_it_is_written() -> None:
    size = 16 * MB
    with mmap.mmap(-1, size) as region:
        buf = np.frombuffer(region, dtype=np.uint8)
        if not memory.prefault_async(buf.ctypes.data, size, lambda: 0):
            pytest.skip("this kernel or libc cannot populate pages")
        _wait_for_prefaulter()
        if not memory._prefault_works:
            pytest.skip("this kernel has no MADV_POPULATE_WRITE")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        buf[:] = 7
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        assert faults < 64, f"{faults} page faults writing a prefaulted buffer of {size // 4096} pages"
        assert int(buf[::4096].sum()) == 7 * (size // 4096)
        del buf


def test_prefaulting_stops_once_the_buffer_is_gone_and_never_changes_its_contents() -> None:
    size = 16 * MB
    with mmap.mmap(-1, size) as region:
        buf = np.frombuffer(region, dtype=np.uint8)
        buf[: 4 * MB] = 5  # what the writer has already put there
        memory.prefault_async(buf.ctypes.data, size, lambda: 4 * MB)
        memory.prefault_async(buf.ctypes.data, size, lambda: None)
        _wait_for_prefaulter()
        assert int(buf[: 4 * MB].min()) == 5 and int(buf[4 * MB :].max()) == 0
        del buf


def test_fresh_large_receive_buffers_are_prefaulted_and_reused_ones_are_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool = blobstream.ReceiveBuffers(min_size=8 * MB, limit=64 * MB)
    first, fresh = pool.take_fresh(8 * MB)
    assert fresh
    address = first.ctypes.data
    del first
    again, fresh = pool.take_fresh(8 * MB)
    assert again.ctypes.data == address and not fresh
    del again

    monkeypatch.setattr(blobstream, "receive_buffers", blobstream.ReceiveBuffers())
    blob = blobstream.IncomingBlob("b", blobstream.receive_buffers.min_size)
    assert blob.prefaulting == memory._prefault_works
    data = np.random.default_rng(0).integers(0, 255, blob.size, dtype=np.uint8)
    for start in range(0, blob.size, blobstream.CHUNK_SIZE):
        blob.write(memoryview(data[start : start + blobstream.CHUNK_SIZE]))
    assert blob.complete and np.array_equal(blob.buffer, data)
    assert not blobstream.IncomingBlob("s", 1 * MB).prefaulting  # small blobs: nothing to gain


def test_the_engine_warm_up_runs_a_push_an_apply_and_a_pull_and_leaves_no_trace(
    make_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Engines run a push, an apply and a pull once at start, on a kernel of their own: the
    user's namespace, execution count and files are untouched; without shared memory too."""
    from pxgrpc.engine import kernel, warmup

    outcomes: list[Any] = []
    run = kernel.Kernel.run

    def recording(self: Any, action: Any, blobs: Any) -> Any:
        outcome = run(self, action, blobs)
        outcomes.append((action.WhichOneof("kind"), outcome.error))
        return outcome

    monkeypatch.setattr(kernel.Kernel, "run", recording)
    monkeypatch.delitem(sys.modules, "IPython", raising=False)  # (as in an engine at start)
    main = sys.modules["__main__"]
    for sharing in ("auto", "off"):
        monkeypatch.setenv("PXGRPC_SHARED_MEMORY", sharing)
        outcomes.clear()
        warmup.warm_up()
        assert sys.modules["__main__"] is main
        kinds = [kind for kind, _ in outcomes]
        assert kinds == (["push", "apply", "pull"] if sharing == "auto" else ["apply", "pull"])
        assert all(error is None for _, error in outcomes), outcomes
    _, rc = make_cluster(n=2)
    dv = rc[:]
    names = "_names = sorted(k for k in globals() if not k.startswith('_'))"
    assert [r.execution_count for r in dv.execute(names, silent=False, block=True)] == [1, 1]
    assert dv.pull("_names", block=True) == [[], []]
