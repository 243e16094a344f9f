"""The direct data path: large arguments and results travel straight between client and engine
when the engine's data endpoint is reachable, through the controller otherwise."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import numpy as np
import pytest

from pxgrpc import blobstream, wire
from pxgrpc.security.tokens import auth_metadata
from tests.conftest import lanes_open

pytestmark = pytest.mark.timeout(60)

MB = 1 << 20


def _forbid_relay(rc: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any upload through the controller fail the test."""

    async def no_relay(blob: Any) -> None:
        raise AssertionError(f"blob {blob.blob_id} went through the controller")

    monkeypatch.setattr(rc._transport.submitter, "_upload", no_relay)


def test_engines_on_loopback_offer_a_data_endpoint(make_cluster: Any) -> None:
    _, rc = make_cluster(n=2)
    urls = [e["data_url"] for e in rc.engines]
    assert all(url.startswith("127.0.0.1:") for url in urls) and len(set(urls)) == 2


def test_large_push_and_pull_go_straight_to_the_engine(
    make_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, rc = make_cluster(n=2)
    _forbid_relay(rc, monkeypatch)
    data = np.random.default_rng(1).random(20 * MB // 8)
    rc[0].push({"a": data}, block=True)
    assert np.array_equal(rc[0].pull("a", block=True), data)
    rc[1].push({"b": data[::2].copy(), "c": b"x" * (3 * MB)}, block=True)
    rc[1].execute("r = (float(b.sum()), len(c))", block=True)
    assert rc[1].pull("r", block=True) == (float(data[::2].sum()), 3 * MB)


@pytest.mark.parametrize("lanes", ["off", "on"])
def test_a_broadcast_goes_up_once_through_the_controller(
    make_cluster: Any, monkeypatch: pytest.MonkeyPatch, lanes: str
) -> None:
    """Without task lanes a value for several engines is uploaded once, to the controller; with
    them (engines on the client's host) it is not uploaded at all: the engines map the client's file."""
    monkeypatch.setenv("PXGRPC_TASK_LANE", lanes)
    _, rc = make_cluster(n=3)
    if lanes == "on":
        lanes_open(rc, shared_memory=True)
    submitter = rc._transport.submitter
    uploads = []
    original = submitter._upload

    async def counted(blob: Any) -> None:
        uploads.append(blob.blob_id)
        await original(blob)

    monkeypatch.setattr(submitter, "_upload", counted)
    data = np.random.default_rng(1).random(4 * MB // 8)
    rc[:].push({"b": data, "c": b"x" * (3 * MB)}, block=True)
    rc[:].execute("r = (float(b.sum()), len(c))", block=True)
    assert rc[:].pull("r", block=True) == [(float(data.sum()), 3 * MB)] * 3
    assert len(uploads) == (1 if lanes == "off" else 0)


def test_pulled_arrays_are_writable_and_independent_of_the_engine(make_cluster: Any) -> None:
    _, rc = make_cluster(n=1)
    rc[0].execute("import numpy as np; big = np.arange(3_000_000)", block=True)
    pulled = rc[0].pull("big", block=True)
    pulled[0] = -1
    rc[0].execute("first = int(big[0])", block=True)
    assert pulled[1] == 1 and rc[0].pull("first", block=True) == 0


def test_direct_tasks_stay_in_submission_order_behind_a_large_upload(make_cluster: Any) -> None:
    _, rc = make_cluster(n=1)
    e0 = rc[0]
    e0.block = False
    e0.execute("log = []")
    for i in range(5):
        e0.push({"x": np.full(MB, i)})
        e0.execute("log.append(int(x[0]))")
    assert e0.pull("log", block=True) == [0, 1, 2, 3, 4]


def test_scatter_and_gather_of_arrays_use_the_data_path(
    make_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, rc = make_cluster(n=2)
    _forbid_relay(rc, monkeypatch)
    data = np.arange(4 * MB // 8, dtype=np.int64)
    rc[:].scatter("part", data, block=True)
    assert np.array_equal(rc[:].gather("part", block=True), data)


def test_unreachable_endpoint_falls_back_to_the_controller(
    make_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PXGRPC_TASK_LANE", "off")  # (a lane would carry the push without the endpoint)
    _, rc = make_cluster(n=1)
    direct = rc._transport._datapath
    direct.set_urls({0: "127.0.0.1:9"})  # nothing listens there
    data = np.random.default_rng(2).random(2 * MB)
    rc[0].push({"a": data}, block=True)
    assert "127.0.0.1:9" in direct._broken
    assert np.array_equal(rc[0].pull("a", block=True), data)


def test_without_data_endpoints_everything_goes_through_the_controller(
    make_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PXGRPC_DATA_ENDPOINT", "off")
    _, rc = make_cluster(n=2)
    assert [e["data_url"] for e in rc.engines] == ["", ""]
    data = np.random.default_rng(3).random(2 * MB)
    rc[:].push({"a": data}, block=True)
    assert all(np.array_equal(a, data) for a in rc[:].pull("a", block=True))


def test_large_results_of_load_balanced_tasks_come_through_the_controller(make_cluster: Any) -> None:
    _, rc = make_cluster(n=2)
    results = rc.load_balanced_view().map_sync(lambda n: __import__("numpy").full(n, n), [MB, MB // 2])
    assert [r.shape for r in results] == [(MB,), (MB // 2,)] and results[1][0] == MB // 2


# --- receive buffers ----------------------------------------------------------------------------


def test_receive_buffers_are_reused_only_when_nothing_refers_to_them() -> None:
    from pxgrpc.blobstream import ReceiveBuffers

    pool = ReceiveBuffers(min_size=100, limit=10_000)
    first = pool.take(1000)
    address = first.ctypes.data
    view = np.frombuffer(memoryview(first)[10:20], dtype=np.uint8)
    del first
    assert pool.take(1000).ctypes.data != address  # a view still refers to it
    del view
    assert pool.take(900).ctypes.data == address  # free now (and big enough)
    assert pool.take(50).base is None  # small buffers are never pooled


def test_receive_buffers_forget_the_oldest_beyond_their_limit() -> None:
    from pxgrpc.blobstream import ReceiveBuffers

    pool = ReceiveBuffers(min_size=100, limit=2500)
    addresses = [pool.take(1000).ctypes.data for _ in range(3)]
    assert pool.take(1000).ctypes.data in addresses[1:]
    assert sum(b.nbytes for b in pool._buffers) <= 2500


def _upload_raw(rc: Any, messages: list[bytes]) -> grpc.RpcError:
    """Upload raw BlobChunk messages to engine 0's data endpoint; return the error it answers."""
    url = rc.engines[0]["data_url"]
    metadata = auth_metadata(rc._transport.info.token)
    with grpc.insecure_channel(url) as channel:
        upload = channel.stream_unary(f"/{wire.ENGINE_DATA_SERVICE}/Upload")
        with pytest.raises(grpc.RpcError) as caught:
            upload(iter(messages), metadata=metadata, timeout=20)
    return caught.value


def test_the_data_endpoint_refuses_bad_uploads_and_the_engine_goes_on(make_cluster: Any) -> None:
    _, rc = make_cluster(1)

    def header(blob_id: str, size: int) -> bytes:
        return wire.pb.BlobChunk(header=wire.pb.BlobHeader(blob_id=blob_id, size=size)).SerializeToString()

    too_big = _upload_raw(rc, [header("huge", 1 << 50)])
    assert too_big.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "BlobHeader.size" in (too_big.details() or "")
    big_chunk = blobstream.encode_data_chunk(b"x" * (blobstream.MAX_CHUNK + 1))
    oversized = _upload_raw(rc, [header("chunky", 16 * MB), big_chunk])
    assert oversized.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "BlobChunk.data" in (oversized.details() or "")
    bad_id = _upload_raw(rc, [header("no spaces allowed", 1)])
    assert bad_id.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "BlobHeader.blob_id" in (bad_id.details() or "")
    assert rc[0].apply_sync(lambda: 41 + 1) == 42
    rc[0].push({"a": np.arange(4 * MB)}, block=True)  # a large push still goes straight there
    assert rc[0].apply_sync(lambda: 41 + 1) == 42


def test_a_download_whose_header_names_another_blob_is_refused() -> None:
    async def stream() -> Any:
        yield wire.pb.BlobChunk(header=wire.pb.BlobHeader(blob_id="other", size=1)).SerializeToString()
        yield blobstream.encode_data_chunk(b"x")

    with pytest.raises(wire.DecodingError, match=r"BlobHeader\.blob_id: 'other', but blob wanted"):
        asyncio.run(blobstream.receive(stream(), "wanted"))
    assert asyncio.run(blobstream.receive(stream())).blob_id == "other"  # an upload names its blob
