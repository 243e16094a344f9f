"""Large payloads stream in chunks: a 1 GB array goes to an engine and comes back intact."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import pxgrpc as ipp

pytestmark = pytest.mark.timeout(180)

GB = 1 << 30


def test_push_and_pull_of_a_1gb_array(make_cluster) -> None:  # type: ignore[no-untyped-def]
    _, rc = make_cluster(n=1)
    view = rc[0]
    data = np.arange(GB // 8, dtype=np.int64)
    view.push({"big": data}, block=True)
    summary = view.apply_sync(ipp.interactive(lambda: (big.nbytes, int(big[-1]), int(big[::4096].sum()))))  # type: ignore[name-defined] # noqa: F821
    assert summary == (GB, GB // 8 - 1, int(data[::4096].sum()))
    back = view.pull("big", block=True)
    assert back.dtype == np.int64 and back.shape == data.shape
    assert np.array_equal(back[::1024], data[::1024]) and back[-1] == data[-1]
    del back
    view.execute("del big", block=True)


def test_scatter_and_gather_of_a_large_array_and_pickled_objects(make_cluster) -> None:  # type: ignore[no-untyped-def]
    _, rc = make_cluster(n=2)
    dv = rc[:]
    data = np.random.default_rng(0).random((3_000_001, 4))  # ~96 MB
    dv.scatter("part", data, block=True)
    shapes = dv.apply_sync(ipp.interactive(lambda: part.shape))  # type: ignore[name-defined] # noqa: F821
    assert shapes == [(1_500_001, 4), (1_500_000, 4)]
    assert np.array_equal(dv.gather("part", block=True), data)
    payload = {"blob": b"x" * (3 << 20), "items": list(range(300_000))}
    dv["payload"] = payload
    assert dv["payload"] == [payload, payload]


@pytest.mark.parametrize("lanes", ["on", "off"])
def test_a_print_larger_than_any_message_arrives_whole_and_the_engine_lives(
    make_cluster: Any, monkeypatch: pytest.MonkeyPatch, lanes: str
) -> None:
    """One print of 70 million characters is more than a gRPC message or a lane frame may
    carry: it goes in pieces (it used to end the engine's work stream, and so the engine)."""
    monkeypatch.setenv("PXGRPC_TASK_LANE", lanes)
    _, rc = make_cluster(n=1)
    ar = rc[0].execute("print('x' * 70_000_000, end='')", block=True)
    assert len(ar.stdout) == 70_000_000 and set(ar.stdout) == {"x"}
    assert rc[0].apply_sync(abs, -2) == 2


@pytest.mark.parametrize("lanes", ["on", "off"])
def test_a_display_bundle_larger_than_a_message_fails_its_task_with_the_reason(
    make_cluster: Any, monkeypatch: pytest.MonkeyPatch, lanes: str
) -> None:
    monkeypatch.setenv("PXGRPC_TASK_LANE", lanes)
    _, rc = make_cluster(n=1)
    code = "from IPython.display import display\ndisplay({'text/plain': 'x' * 70_000_000}, raw=True)"
    with pytest.raises(ipp.RemoteError) as caught:
        rc[0].execute(code, block=True)
    assert caught.value.ename == "ValueError" and "display: a bundle of" in str(caught.value)
    assert rc[0].apply_sync(abs, -2) == 2
