"""LoadBalancedView and rc.executor(): ordering, unordered results, retries after an engine dies,
and the concurrent.futures.Executor contract, against real clusters."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import sys
import time
from typing import Any

import cloudpickle
import pytest

import pxgrpc as ipp
from pxgrpc.cluster import Cluster

pytestmark = pytest.mark.timeout(60)

# Engines cannot import this test module: send its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture
def lview(cluster3: tuple[Cluster, ipp.Client]) -> ipp.LoadBalancedView:
    return cluster3[1].load_balanced_view()


def square(x: int) -> int:
    return x * x


def sleep_then_return(seconds: float, value: Any) -> Any:
    import time

    time.sleep(seconds)
    return value


# --- ordering ---------------------------------------------------------------------------------


@pytest.mark.parametrize("chunksize", [None, 1, 3, 7, 1000])
def test_map_returns_results_in_input_order_whatever_the_chunksize(lview: Any, chunksize: int | None) -> None:
    assert lview.map_sync(square, range(50), chunksize=chunksize) == [x * x for x in range(50)]


def test_map_keeps_input_order_when_tasks_finish_out_of_order(lview: Any) -> None:
    delays = [0.3, 0.0, 0.2, 0.0, 0.1, 0.0]
    assert lview.map_sync(sleep_then_return, delays, range(6)) == list(range(6))


def test_map_of_several_sequences_stops_at_the_shortest(lview: Any) -> None:
    assert lview.map_sync(lambda a, b: a + b, [1, 2, 3], [10, 20]) == [11, 22]


def test_map_of_an_empty_sequence_is_empty(lview: Any) -> None:
    assert lview.map_sync(square, []) == []


def test_map_of_many_tiny_tasks_runs_them_all_once(lview: Any) -> None:
    assert lview.map_sync(square, range(3000)) == [x * x for x in range(3000)]


def test_unordered_map_yields_results_as_they_complete(lview: Any) -> None:
    # The slow task is first: an ordered map must wait for it, an unordered one must not.
    delays = [1.0, 0.0, 0.0, 0.0]
    unordered = lview.imap(sleep_then_return, delays, ["slow", "a", "b", "c"], ordered=False)
    results = list(unordered)
    assert sorted(results) == ["a", "b", "c", "slow"]
    assert results[0] != "slow"
    ordered = lview.imap(sleep_then_return, delays, ["slow", "a", "b", "c"])
    assert list(ordered) == ["slow", "a", "b", "c"]


def test_unordered_map_async_result_holds_every_result(lview: Any) -> None:
    ar = lview.map(square, range(20), ordered=False, block=False)
    assert sorted(ar.get(timeout=30)) == [x * x for x in range(20)]
    assert sorted(ar) == [x * x for x in range(20)]


def test_load_balanced_tasks_use_every_engine(cluster3: tuple[Cluster, ipp.Client]) -> None:
    _, rc = cluster3
    pids = rc.load_balanced_view().map_sync(lambda _: __import__("os").getpid(), [0.05] * 30, chunksize=1)
    engine_pids = {e["pid"] for e in rc.engines}
    assert set(pids) == engine_pids


def test_a_long_task_does_not_hold_up_short_ones_on_other_engines(lview: Any) -> None:
    slow = lview.apply_async(sleep_then_return, 2.0, "slow")
    quick = lview.map_sync(sleep_then_return, [0.01] * 10, range(10))
    assert quick == list(range(10)) and not slow.ready()
    assert slow.get(timeout=30) == "slow"


def test_errors_in_map_tasks_raise_with_the_remote_traceback(lview: Any) -> None:
    with pytest.raises(ipp.RemoteError) as info:
        lview.map_sync(lambda x: 1 / x, [1, 0, 2])
    assert "ZeroDivisionError" in str(info.value)


# --- the Executor -----------------------------------------------------------------------------


def test_executor_submit_returns_futures(cluster3: tuple[Cluster, ipp.Client]) -> None:
    _, rc = cluster3
    with rc.executor() as ex:
        futures = [ex.submit(pow, 2, n) for n in range(10)]
        assert all(isinstance(f, concurrent.futures.Future) for f in futures)
        _, not_done = concurrent.futures.wait(futures, timeout=30)
        assert not not_done
        completed = concurrent.futures.as_completed(futures)
        assert sorted(f.result() for f in completed) == [2**n for n in range(10)]


def test_executor_map_is_lazy_ordered_and_chunked(cluster3: tuple[Cluster, ipp.Client]) -> None:
    _, rc = cluster3
    with rc.executor() as ex:
        assert list(ex.map(square, range(30))) == [x * x for x in range(30)]
        assert list(ex.map(pow, [2, 3], [5, 2], chunksize=2)) == [32, 9]


def test_executor_future_carries_the_remote_exception(cluster3: tuple[Cluster, ipp.Client]) -> None:
    _, rc = cluster3
    with rc.executor() as ex:
        future = ex.submit(lambda: {}["missing"])
        assert isinstance(future.exception(timeout=30), ipp.RemoteError)
        with pytest.raises(ipp.RemoteError, match="KeyError"):
            future.result()


def test_executor_shutdown_waits_for_pending_work_then_refuses_more(cluster3: Any) -> None:
    _, rc = cluster3
    ex = rc.executor()
    future = ex.submit(sleep_then_return, 0.3, "done")
    ex.shutdown(wait=True)
    assert future.done() and future.result() == "done"
    with pytest.raises(RuntimeError):
        ex.submit(square, 2)


# --- retries when an engine dies --------------------------------------------------------------


def _engine_running(rc: ipp.Client, ar: Any, timeout: float = 20.0) -> int:
    """The id of the engine running `ar` (its task prints as soon as it starts)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        engine = ar.engine_id
        if engine is not None:
            return int(engine)
        time.sleep(0.01)
    raise AssertionError("the task never reported its engine")


def _kill_engine(rc: ipp.Client, engine_id: int) -> int:
    pid = next(e["pid"] for e in rc.engines if e["id"] == engine_id)
    os.kill(pid, signal.SIGKILL)
    return int(pid)


def report_then_sleep(seconds: float) -> int:
    import os
    import time

    print("started", flush=True)
    time.sleep(seconds)
    return os.getpid()


def test_retries_rerun_a_task_whose_engine_was_killed(make_cluster: Any) -> None:
    _, rc = make_cluster(n=2)
    lview = rc.load_balanced_view()
    lview.retries = 1
    ar = lview.apply_async(report_then_sleep, 1.5)
    killed = _kill_engine(rc, _engine_running(rc, ar))
    pid = ar.get(timeout=30)
    assert pid != killed and pid in {e["pid"] for e in rc.engines}


def test_without_retries_the_task_of_a_killed_engine_fails_with_engine_error(make_cluster: Any) -> None:
    _, rc = make_cluster(n=2)
    ar = rc.load_balanced_view().apply_async(report_then_sleep, 5)
    _kill_engine(rc, _engine_running(rc, ar))
    with pytest.raises(ipp.EngineError):
        ar.get(timeout=30)


def test_a_map_with_retries_completes_although_an_engine_is_killed(make_cluster: Any) -> None:
    _, rc = make_cluster(n=3)
    lview = rc.load_balanced_view()
    lview.set_flags(retries=2)
    first = lview.apply_async(report_then_sleep, 1.0)
    ar = lview.map(sleep_then_return, [0.1] * 30, range(30), block=False)
    _kill_engine(rc, _engine_running(rc, first))
    assert ar.get(timeout=40) == list(range(30))
    assert isinstance(first.get(timeout=30), int)
    assert len(rc.ids) == 2


def test_aborting_tasks_queued_behind_a_running_one_answers_them_at_once(make_cluster: Any) -> None:
    _, rc = make_cluster(n=1)
    lview = rc.load_balanced_view()
    running = lview.apply_async(report_then_sleep, 3)
    _engine_running(rc, running)
    queued = [lview.apply_async(square, n) for n in range(3)]
    deadline = time.monotonic() + 20
    while rc.queue_status()[0]["queue"] < 3 and time.monotonic() < deadline:
        time.sleep(0.01)  # until all three wait on the engine behind the running task
    for ar in queued:
        ar.abort()
    for ar in queued:
        with pytest.raises(ipp.TaskAborted):
            ar.get(timeout=30)
    assert not running.ready()  # the aborts did not wait for it
    assert isinstance(running.get(timeout=30), int)
