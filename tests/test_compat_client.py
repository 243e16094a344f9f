"""ipyparallel's Client and view calls, run unchanged against real clusters (issue 15, "Client
and views"): clear, importer, send_signal, the waits, queue_status, engine ids, serializers."""

from __future__ import annotations

import concurrent.futures
import pathlib
import signal
import sys
import time

import cloudpickle
import pytest

import pxgrpc as ipp
from tests.engine_side import wait_for_file

pytestmark = pytest.mark.timeout(60)

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def wait_until_busy(rc: ipp.Client, engines: list[int]) -> None:
    deadline = time.monotonic() + 30
    while not all(e["state"] == "busy" for e in rc.engines if e["id"] in engines):
        assert time.monotonic() < deadline, rc.engines
        time.sleep(0.02)


def engine_has(name: str) -> bool:
    """(On an engine, in its namespace.) Whether the engine has a variable `name`."""
    return name in globals()


def test_clear_empties_the_engines_namespaces(rc: ipp.Client) -> None:
    has = ipp.interactive(engine_has)
    dv = rc[:]
    dv.push({"kept_until_clear": 1, "other": 2}, block=True)
    assert rc.clear(targets=[0, 1], block=True) is None
    assert dv.apply_sync(has, "kept_until_clear") == [False, False, True, True]
    ar = dv.clear()
    assert isinstance(ar, ipp.AsyncResult) and ar.get(timeout=30) == [None] * 4
    assert dv.apply_sync(has, "other") == [False] * 4
    assert dv.apply_sync(has, "__builtins__") == [True] * 4  # (the namespace still works)
    dv.execute("after_clear = 3", block=True)
    assert dv["after_clear"] == [3] * 4


def test_importer_imports_here_and_on_the_engines(rc: ipp.Client, capsys: pytest.CaptureFixture[str]) -> None:
    dv = rc[:]
    with dv.importer:
        import colorsys  # noqa: F401
    assert "importing colorsys on engine(s)" in capsys.readouterr().out
    assert dv.apply_sync(ipp.interactive(engine_has), "colorsys") == [True] * 4


def test_send_signal_sigint_interrupts_the_running_task(rc: ipp.Client, tmp_path: pathlib.Path) -> None:
    running = rc[2].apply_async(wait_for_file, str(tmp_path / "never"))
    wait_until_busy(rc, [2])
    assert rc.send_signal(signal.SIGINT, targets=[2]) == [2]
    with pytest.raises(ipp.RemoteError) as info:
        running.get(timeout=30)
    assert info.value.ename == "KeyboardInterrupt"
    assert rc.send_signal("SIGINT", targets=2) == [2]  # an idle engine ignores it
    assert rc[2].apply_sync(abs, -2) == 2
    with pytest.raises(ValueError, match=r"SIGBOGUS.* not a signal"):
        rc.send_signal("SIGBOGUS")


def test_send_signal_reaches_idle_engines(make_cluster) -> None:  # type: ignore[no-untyped-def]
    _, rc = make_cluster(n=2)
    assert rc.send_signal("TERM", targets=[1]) == [1]
    deadline = time.monotonic() + 30
    while 1 in rc.ids:
        assert time.monotonic() < deadline, rc.engines
        time.sleep(0.05)
    assert rc.ids == [0] and rc[0].apply_sync(abs, -1) == 1


def test_wait_interactive_waits_for_everything_outstanding(
    rc: ipp.Client, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gate = tmp_path / "go"
    ars = [rc[i].apply_async(wait_for_file, str(gate)) for i in range(4)]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(rc.wait_interactive, interval=0.05)
        assert not waiting.done() or not all(ar.done() for ar in ars)
        gate.touch()
        waiting.result(timeout=30)
    assert all(ar.done() for ar in ars)
    rc.wait_interactive()  # nothing outstanding: returns at once


def test_wait_takes_plain_futures_ids_and_history_indices(rc: ipp.Client) -> None:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        plain = pool.submit(lambda: "plain")
        ar = rc[:].apply_async(abs, -1)
        assert rc.wait([plain, ar], timeout=30)
        assert plain.done() and ar.done()
    rc[1].apply_async(abs, -2)
    assert rc.wait(-1, timeout=30) and rc.wait(rc.history[-1], timeout=30)
    assert rc.get_result(-1).get() == 2


def test_wait_for_engines_without_block_returns_a_future(rc: ipp.Client) -> None:
    ready = rc.wait_for_engines(4, block=False)
    assert isinstance(ready, concurrent.futures.Future)
    assert ready.result(timeout=30) is None
    never = rc.wait_for_engines(99, timeout=0.2, block=False)
    assert isinstance(never, concurrent.futures.Future)
    with pytest.raises(ipp.TimeoutError, match="engines of 99"):
        never.result(timeout=30)


def test_queue_status_of_one_engine_is_that_engines_queue(rc: ipp.Client) -> None:
    rc[1].apply_sync(abs, -1)
    one = rc.queue_status(targets=1)
    assert set(one) == {"queue", "completed", "tasks"} and one["completed"] >= 1
    assert set(rc.queue_status()) == {0, 1, 2, 3, "unassigned"}
    assert set(rc[:].queue_status(targets=2)) == {"queue", "completed", "tasks"}


def test_an_absent_engine_id_raises_index_error(rc: ipp.Client) -> None:
    with pytest.raises(IndexError, match="no engine 99"):
        rc[99]
    with pytest.raises(ipp.NoEnginesError):  # (still pxgrpc's error, also a ValueError)
        rc[[0, 99]]


def test_load_balanced_view_of_minus_one_is_the_last_engine(rc: ipp.Client) -> None:
    last = rc.load_balanced_view(-1)
    assert last.targets == [rc.ids[-1]]
    assert {last.apply_sync(lambda: __import__("os").getpid()) for _ in range(4)} == {
        rc[rc.ids[-1]].apply_sync(lambda: __import__("os").getpid())
    }
    assert rc.load_balanced_view("all").targets is None


def test_use_cloudpickle_and_use_pickle_are_accepted(rc: ipp.Client) -> None:
    dv = rc[:]
    assert dv.use_cloudpickle() is None and dv.use_pickle() is None
    scale = 3
    assert dv.apply_sync(lambda x: x * scale, 2) == [6] * 4  # closures still travel
