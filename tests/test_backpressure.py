"""No client can grow the controller's memory without bound, and the others keep being served."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from raw_controller import SERVICE, RawController

import pxgrpc as ipp
from pxgrpc import wire

pytestmark = pytest.mark.timeout(240)

MB = 1024 * 1024


def rss(pid: int) -> int:
    """The resident memory of process `pid`, in bytes."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def test_a_hundred_thousand_queued_tasks_hold_the_controller_to_a_bounded_size(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster, rc = make_cluster(n=1)
    controller = cluster.controller.pid
    rc[0].execute("x = 1", block=True)
    before = rss(controller)
    busy = rc[0].execute("import time; time.sleep(600)", block=False)
    lview = rc.load_balanced_view()
    results = [lview.apply_async(int) for _ in range(100_000)]
    time.sleep(2)  # (whatever the controller will take in, it has)
    grown = rss(controller) - before
    # Queued in the controller, each task costs about 1 KB: 100k would be 100 MB or more.
    assert grown < 50 * MB, f"the controller grew by {grown / MB:.0f} MB"
    # Held back, not lost: once the engine is free, every task runs.
    rc.interrupt(targets=[0])
    with pytest.raises(ipp.RemoteError):
        busy.get(timeout=30)
    assert results[-1].get(timeout=180) == 0
    assert all(ar.get(timeout=30) == 0 for ar in results[::997])


def _loud_tasks(stop: threading.Event) -> Iterator[bytes]:
    """A session's requests: tasks that print 800 MB in all, then nothing until `stop`."""
    code = "for _ in range(8000): print('x' * 50000)"
    tasks = [
        wire.pb.SubmitTask(
            task_id=str(i), engine_id=0, action=wire.pb.Action(execute=wire.pb.ExecuteAction(code=code))
        )
        for i in range(2)
    ]
    yield wire.pb.SessionRequest(tasks=tasks).SerializeToString()
    stop.wait(200)


def test_a_client_that_stops_reading_its_results_holds_up_no_one(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster, rc = make_cluster(n=2)
    controller = cluster.controller.pid
    rc[:].execute("x = 1", block=True)
    before = rss(controller)
    raw = RawController(cluster.connection_file)
    stop = threading.Event()
    session = raw.channel.stream_stream(SERVICE + "Session")
    call = session(_loud_tasks(stop), metadata=raw.metadata, timeout=200)  # (its replies are never read)
    try:
        # Another client is served, by both engines, while the first one reads nothing.
        assert rc[1].apply_sync(lambda: "served") == "served"
        assert rc.load_balanced_view().map_sync(lambda i: i * 2, range(20)) == list(range(0, 40, 2))
        # Engine 0 prints its 800 MB for the silent client, then serves the other one.
        assert rc[0].apply_async(lambda: "engine 0 served").get(timeout=120) == "engine 0 served"
        grown = rss(controller) - before
        assert grown < 250 * MB, f"the controller grew by {grown / MB:.0f} MB"
    finally:
        stop.set()
        call.cancel()
        raw.close()
