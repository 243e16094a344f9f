"""ipyparallel's results, run unchanged against a real 4-engine cluster (issue 15, "Results"):
ExecuteReply, AsyncResult's metadata, timing, split/join and wait, published data, and this
client's task history."""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import sys
import time
from typing import Any

import cloudpickle
import pytest

import pxgrpc as ipp
from pxgrpc.client.executereply import ExecuteReply
from tests.engine_side import wait_for_file

pytestmark = pytest.mark.timeout(60)

# The engines cannot import this module: send its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def publish_until_file(path: str) -> str:
    """(On an engine.) Publish a counter, then the final value once `path` exists."""
    import os
    import time

    from pxgrpc.datapub import publish_data

    publish_data({"stage": "started", "count": 1})
    while not os.path.exists(path):
        time.sleep(0.01)
    publish_data({"stage": "finished"})
    return "done"


def test_execute_get_gives_an_execute_reply_per_engine(rc: ipp.Client) -> None:
    ar = rc[:].execute("print('hi from', 'engine')\n6 * 7", silent=False, block=True)
    replies = ar.get()
    assert [type(r) for r in replies] == [ExecuteReply] * 4
    for engine_id, reply in zip(rc.ids, replies, strict=True):
        assert reply.execution_count >= 1
        assert reply.stdout == "hi from engine\n" and reply["stdout"] == reply.stdout
        assert reply.data["text/plain"] == "42"
        assert reply.metadata["engine_id"] == engine_id
        assert repr(reply) == f"<ExecuteReply[{reply.execution_count}]: 42>"
    quiet = rc[:].execute("quiet = 1", block=True).get()
    assert [(r.data, r.stdout) for r in quiet] == [({}, "")] * 4


def test_execute_on_one_engine_gives_one_reply_shown_as_its_out(rc: ipp.Client) -> None:
    from IPython.lib.pretty import pretty

    reply = rc[2].execute("'two' * 2", silent=False).get(timeout=30)
    assert isinstance(reply, ExecuteReply)
    assert pretty(reply) == f"Out[2:{reply.execution_count}]: 'twotwo'"
    data, metadata = reply._repr_mimebundle_()
    assert data["text/plain"] == pretty(reply) and metadata == {"engine": 2}


def test_get_dict_keys_the_results_by_engine(rc: ipp.Client) -> None:
    pids = rc[:].apply_async(os.getpid)
    assert pids.get_dict() == dict(zip(rc.ids, pids.get(), strict=True))
    assert rc[1].apply_async(abs, -5).get_dict() == {1: 5}
    twice = ipp.AsyncResult.join(rc[0].apply_async(abs, -1), rc[0].apply_async(abs, -2))
    with pytest.raises(ValueError, match="2 tasks ran on engine 0"):
        twice.get_dict()
    with pytest.raises(ValueError, match="no value per engine"):
        rc[:].map_async(abs, range(8)).get_dict()


def test_metadata_keys_are_attributes_and_items(rc: ipp.Client) -> None:
    ar = rc[:2].apply_async(os.getpid)
    ar.get(timeout=30)
    assert ar.engine_id == ar["engine_id"] == [0, 1]
    assert all(c is not None and c == m["completed"] for c, m in zip(ar.completed, ar.metadata, strict=True))
    assert ar["status"] == ["ok", "ok"]
    one = rc[3].apply_async(abs, -1)
    one.get(timeout=30)
    assert one.engine_id == 3 and one["msg_id"] == one.msg_ids[0]
    with pytest.raises(AttributeError, match="no_such_key"):
        _ = ar.no_such_key


def test_wall_and_serial_time_raise_timeout_error_until_done(rc: ipp.Client, tmp_path: pathlib.Path) -> None:
    gate = str(tmp_path / "go")
    ar = rc[0].apply_async(wait_for_file, gate)
    with pytest.raises(ipp.TimeoutError, match="not ready"):
        _ = ar.wall_time
    with pytest.raises(TimeoutError):
        _ = ar.serial_time
    pathlib.Path(gate).touch()
    ar.get(timeout=30)
    assert ar.wall_time >= ar.serial_time >= 0


def test_split_and_join_give_the_tasks_back_one_by_one(rc: ipp.Client) -> None:
    ar = rc[:].apply_async(os.getpid)
    parts = ar.split()
    assert [p.msg_ids for p in parts] == [[task_id] for task_id in ar.msg_ids]
    assert [p.get(timeout=30) for p in parts] == ar.get(timeout=30)
    assert [p.engine_id for p in parts] == [0, 1, 2, 3]
    joined = ipp.AsyncResult.join(*parts)
    assert joined.msg_ids == ar.msg_ids and joined.get(timeout=30) == ar.get()
    later = rc[1].apply_async(abs, -7)
    assert ipp.AsyncResult.join(parts[0], later).get(timeout=30) == [ar.get()[0], 7]


def fail_on_one(x: int, gate: str) -> int:
    import os
    import time

    if x == 1:
        raise ValueError("one")
    while not os.path.exists(gate):
        time.sleep(0.01)
    return x


def test_wait_first_exception_returns_the_done_and_pending_tasks(
    rc: ipp.Client, tmp_path: pathlib.Path
) -> None:
    gate = str(tmp_path / "go")
    ar = rc[:3].map_async(fail_on_one, [0, 1, 2], [gate] * 3)
    done, pending = ar.wait(timeout=30, return_when=ipp.FIRST_EXCEPTION)
    assert len(done) == 1 and len(pending) == 2
    (failed,) = done
    with pytest.raises(ipp.RemoteError, match="one"):
        failed.get()
    pathlib.Path(gate).touch()
    done, pending = ar.wait(timeout=30, return_when=ipp.ALL_COMPLETED)
    assert len(done) == 3 and not pending
    first, _ = rc[:].apply_async(abs, -1).wait(timeout=30, return_when=ipp.FIRST_COMPLETED)
    assert first


def test_wait_for_output_has_all_the_output_once_it_returns(rc: ipp.Client) -> None:
    ar = rc[:].execute("for i in range(3):\n    print(i)", block=False)
    assert ar.wait_for_output(timeout=30) is True
    assert ar.stdout == ["0\n1\n2\n"] * 4


def test_published_data_is_seen_while_the_task_runs(rc: ipp.Client, tmp_path: pathlib.Path) -> None:
    gate = str(tmp_path / "go")
    ar = rc[1].apply_async(publish_until_file, gate)
    deadline = time.monotonic() + 30
    while ar.data == {} and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ar.data == {"stage": "started", "count": 1}
    assert not ar.ready()
    pathlib.Path(gate).touch()
    assert ar.get(timeout=30) == "done"
    assert ar.data == {"stage": "finished", "count": 1} == ar.metadata["data"]
    # Bad input fails the task, and says why; the engine goes on.
    with pytest.raises(ipp.RemoteError, match="dict of names"):
        rc[1].apply_sync(lambda: __import__("pxgrpc.datapub").datapub.publish_data([1, 2]))
    with pytest.raises(ipp.RemoteError, match="too large to publish"):
        rc[1].apply_sync(lambda: __import__("pxgrpc.datapub").datapub.publish_data({"x": b"x" * 3_000_000}))
    with pytest.raises(RuntimeError, match="only in a task running on a pxgrpc engine"):
        __import__("pxgrpc.datapub").datapub.publish_data({"here": 1})


def test_display_outputs_of_one_engine_has_no_header(rc: ipp.Client, capsys: Any) -> None:
    ar = rc[2].execute("print('alone')\n'value'", silent=False, block=True)
    capsys.readouterr()
    ar.display_outputs()
    assert capsys.readouterr().out == f"alone\nOut[2:{ar.execution_count}]: 'value'\n"


def test_direct_map_len_and_progress_count_elements(rc: ipp.Client) -> None:
    ar = rc[:].map_async(lambda x: x * 2, range(10))
    assert len(ar) == 10 and len(ar.msg_ids) == 4
    assert ar.get(timeout=30) == [x * 2 for x in range(10)]
    assert ar.progress == 10
    lb = rc.load_balanced_view().map_async(abs, range(7), chunksize=3)
    lb.get(timeout=30)
    assert (len(lb), lb.progress, len(lb.msg_ids)) == (7, 7, 3)


def test_history_lists_this_clients_tasks_in_submission_order(rc: ipp.Client) -> None:
    start = len(rc.history)
    a = rc[0].apply_async(abs, -1)
    b = rc[:2].apply_async(abs, -2)
    assert rc.history[start:] == a.msg_ids + b.msg_ids
    assert rc.history[-1] == b.msg_ids[-1]
    rc.wait([a, b], timeout=30)


def test_get_result_by_index_id_or_view_index(rc: ipp.Client) -> None:
    dv = rc[:2]
    dv.apply_sync(lambda: "first")
    ar = rc.get_result(-1)
    assert ar.get(timeout=30) == "first" and ar.engine_id == 1
    assert rc.get_result(rc.history[-2]).get(timeout=30) == "first"
    assert rc.get_result([-2, -1]).get(timeout=30) == ["first", "first"]
    rc[3].apply_sync(abs, -3)
    assert dv.get_result(-1).get(timeout=30) == "first"
    assert dv.get_result(-1).engine_id == 1
    with pytest.raises(KeyError, match="not in this client's history"):
        rc.get_result("no-such-task")
    with pytest.raises(IndexError, match="history"):
        rc.get_result(10**9)


def test_resubmit_runs_finished_tasks_again(rc: ipp.Client, tmp_path: pathlib.Path) -> None:
    first = rc[:].apply_async(os.getpid)
    pids = first.get(timeout=30)
    again = rc.resubmit(first)
    assert again.get(timeout=30) == pids and again.msg_ids != first.msg_ids
    dv = rc[:]
    dv.execute("resubmitted = globals().get('resubmitted', 0) + 1", block=True)
    rc.resubmit(-1).get(timeout=30)
    assert dv["resubmitted"] == [1, 1, 1, 2]  # (the last task of the execute: engine 3's)
    gate = str(tmp_path / "go")
    running = rc[0].apply_async(wait_for_file, gate)
    with pytest.raises(ValueError, match="still in flight"):
        rc.resubmit(running.msg_ids)
    pathlib.Path(gate).touch()
    running.get(timeout=30)
    assert rc.resubmit(running.msg_ids).get(timeout=30) == [gate]


def test_the_history_keeps_no_large_data_alive(rc: ipp.Client) -> None:
    import gc
    import weakref

    import numpy as np

    big = np.ones(1_000_000)
    alive = weakref.ref(big)
    dv = rc[:2]
    pushed = dv.push({"big": big}, block=True)
    assert pushed == [None, None]
    with pytest.raises(ValueError, match="too large to keep"):
        rc.resubmit(-1)
    dv.apply_sync(np.sum, big)
    with pytest.raises(ValueError, match="too large to keep"):
        rc.resubmit(-1)
    del big
    gc.collect()
    assert alive() is None
    # Results stay reachable for the latest calls, not for ever.
    dv.pull("big", block=True)
    oldest = rc.history[-1]
    for _ in range(20):
        rc[0].apply_sync(abs, -1)
    gc.collect()
    with pytest.raises(KeyError, match="no longer held"):
        rc.get_result(oldest)


def test_map_results_wait_together_with_plain_futures(rc: ipp.Client) -> None:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        plain = pool.submit(lambda: "plain")
        ar = rc[:].map_async(abs, [-1, -2])
        assert rc.wait([plain, ar], timeout=30)
        assert plain.result() == "plain" and ar.get() == [1, 2]
