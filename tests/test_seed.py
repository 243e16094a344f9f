"""The seed notebook's workflow (shared/seed), on 7 engines, through the Python API."""

from __future__ import annotations

import os

import pytest

import pxgrpc as ipp

pytestmark = pytest.mark.timeout(90)


def test_seed_workflow_scatter_transform_gather(make_cluster) -> None:  # type: ignore[no-untyped-def]
    _, rc = make_cluster(n=7)
    assert rc.ids == list(range(7))
    dv = rc[:]
    assert repr(dv) == "<DirectView [0, 1, 2, 3,...]>"

    pids = dv.apply_sync(os.getpid)
    assert len(set(pids)) == 7 and os.getpid() not in pids

    dv.execute("import os\nfoo = 'bar on pid {}'.format(os.getpid())", block=True)
    assert dv["foo"] == [f"bar on pid {pid}" for pid in pids]
    dv["foo"] = "bar"
    assert dv["foo"] == ["bar"] * 7

    user_ids = list(range(1000))
    ar = dv.scatter("user_id_chunk", user_ids)
    assert ar.get() == [None] * 7
    assert repr(ar) == "<AsyncResult: scatter:finished>"
    assert dv.scatter("user_id_chunk", user_ids).get() == [None] * 7

    ar = dv.execute('print("Len", len(user_id_chunk))\nprint("Max", max(user_id_chunk))', block=True)
    lengths = [143] * 6 + [142]
    maxima = [142, 285, 428, 571, 714, 857, 999]
    assert ar.stdout == [f"Len {n}\nMax {m}\n" for n, m in zip(lengths, maxima, strict=True)]

    dv.execute(
        "def the_most_interesting_transformation_ever(user_id):\n"
        "    return 'ID:{}'.format(user_id * 3)\n"
        "transformed_user_ids = list(map(the_most_interesting_transformation_ever, user_id_chunk))",
        block=True,
    )
    everything = dv.gather("transformed_user_ids").get()
    assert len(everything) == 1000
    assert everything[0:10] == [
        "ID:0",
        "ID:3",
        "ID:6",
        "ID:9",
        "ID:12",
        "ID:15",
        "ID:18",
        "ID:21",
        "ID:24",
        "ID:27",
    ]
    assert isinstance(ipp.Client, type)
