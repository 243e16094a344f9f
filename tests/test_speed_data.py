"""Big data without needless copies: a gather of arrays is built once, in place; the history does not
pin large results (their receive buffers are reused)."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from pxgrpc.partition import join_parts, tiled

pytestmark = pytest.mark.timeout(180)


def test_tiled_recognizes_slices_of_one_array_in_order() -> None:
    whole = np.arange(12.0).reshape(6, 2).copy()
    assert tiled([whole[:2], whole[2:5], whole[5:]]) is whole
    assert join_parts([whole[:2], whole[2:]]) is whole
    assert tiled([whole[2:], whole[:2]]) is None  # out of order
    assert tiled([whole[:2], whole[3:]]) is None  # a hole
    assert tiled([whole[:3], np.ones((3, 2))]) is None
    assert np.array_equal(join_parts([whole[2:], whole[:2]]), np.concatenate([whole[2:], whole[:2]]))


@pytest.mark.parametrize("data_endpoint", ["auto", "off"])
def test_gather_of_arrays_returns_one_array_built_in_place(  # type: ignore[no-untyped-def]
    make_cluster, monkeypatch, data_endpoint
) -> None:
    # "off": the blobs come through the controller instead of the engines' endpoints.
    monkeypatch.setenv("PXGRPC_DATA_ENDPOINT", data_endpoint)
    _, rc = make_cluster(n=2)
    dv = rc[:]
    data = np.random.default_rng(1).random((1_000_001, 3))
    dv.scatter("x", data, block=True)
    gathered = dv.gather("x", block=True)
    assert np.array_equal(gathered, data)
    assert gathered.flags.writeable and gathered.flags.c_contiguous
    # Built once: an array of its own, or (engines on this host) one mapping of a shared file.
    assert gathered.base is None or getattr(gathered.base, "whole_buffer", False)
    # Parts that cannot tile one array are joined as before.
    rc[0].push({"x": np.ones((400_000, 2))}, block=True)
    rc[1].push({"x": np.zeros((3, 2), dtype=np.int32)}, block=True)
    mixed = dv.gather("x", block=True)
    assert mixed.shape == (400_003, 2) and mixed.dtype == np.float64
    dv.scatter("x", list(range(7)), block=True)
    assert dv.gather("x", block=True) == list(range(7))
    # One part an array, the other an error: the error is raised.
    dv.scatter("x", data, block=True)
    rc[1].execute("del x", block=True)
    with pytest.raises(Exception, match="x"):
        dv.gather("x", block=True)
    # After a failed gather the client still gathers in place.
    dv.scatter("x", data, block=True)
    assert np.array_equal(dv.gather("x", block=True), data)


def test_the_history_does_not_pin_large_results(make_cluster) -> None:  # type: ignore[no-untyped-def]
    _, rc = make_cluster(n=1)
    e0 = rc[0]
    e0.push({"big": np.ones(1 << 20)}, block=True)
    pulled = [weakref.ref(e0.pull("big", block=True)) for _ in range(3)]
    e0.apply_sync(int)  # (the history forgets large results when the next call is made)
    gc.collect()
    assert all(ref() is None for ref in pulled)
    assert rc.get_result(-1).get() == 0  # small results stay in the history
