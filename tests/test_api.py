"""The ipyparallel-compatible Python API against a real 4-engine cluster."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest

import pxgrpc as ipp
from pxgrpc.security.connection_file import ConnectionInfo
from pxgrpc.security.credentials import channel_options

pytestmark = pytest.mark.timeout(60)


def test_client_lists_engines_in_registration_order(rc: ipp.Client) -> None:
    assert rc.ids == [0, 1, 2, 3]
    assert len(rc) == 4
    engines = rc.engines
    assert [e["id"] for e in engines] == [0, 1, 2, 3]
    assert all(e["pid"] > 0 and e["hostname"] for e in engines)


def test_views_select_engines_like_ipyparallel(rc: ipp.Client) -> None:
    assert rc[:].targets == [0, 1, 2, 3]
    assert rc[::2].targets == [0, 2]
    assert rc[1].targets == 1
    assert rc[[1, 3]].targets == [1, 3]
    assert repr(rc[:]) == "<DirectView [0, 1, 2, 3]>"
    assert repr(rc.direct_view()) == "<DirectView all>"
    assert rc[:].block is False


def test_single_engine_view_returns_bare_values(rc: ipp.Client) -> None:
    assert rc[2].apply_sync(lambda x: x + 1, 41) == 42
    assert rc[:].apply_sync(lambda x: x + 1, 41) == [42, 42, 42, 42]


def test_execute_keeps_a_persistent_namespace_and_returns_out(rc: ipp.Client) -> None:
    dv = rc[:]
    ar = dv.execute("a = 6\nb = 7", block=True)
    assert [reply.data for reply in ar.get()] == [{}] * 4
    ar = dv.execute("a * b", silent=False, block=True)
    assert [r["data"]["text/plain"] for r in ar.execute_result] == ["42"] * 4
    assert all(r["execution_count"] >= 1 for r in ar.execute_result)
    assert dv.pull("a", block=True) == [6] * 4


def test_run_executes_a_local_file(rc: ipp.Client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    script = tmp_path / "script.py"
    script.write_text("from_file = 'yes'\n")
    rc[:].run(str(script), block=True)
    assert rc[:]["from_file"] == ["yes"] * 4


def test_apply_async_is_a_future_and_awaitable(rc: ipp.Client) -> None:
    ar = rc[:].apply_async(os.getpid)
    assert isinstance(ar, concurrent.futures.Future)
    pids = ar.get(timeout=10)
    assert len(set(pids)) == 4 and ar.ready() and ar.successful()
    assert ar.progress == 4 and ar.elapsed > 0

    async def main() -> list[int]:
        return await rc[:].apply_async(os.getpid)  # type: ignore[no-any-return]

    assert asyncio.run(main()) == pids
    done, _ = concurrent.futures.wait(
        [rc[0].apply_async(lambda: 1), rc[1].apply_async(lambda: 2)], timeout=10
    )
    assert sorted(f.result() for f in done) == [1, 2]


def test_apply_passes_args_and_kwargs_and_blocks_when_asked(rc: ipp.Client) -> None:
    dv = rc[:]
    dv.block = True
    try:
        assert dv.apply(lambda a, b=0: a * b, 3, b=4) == [12] * 4
    finally:
        dv.block = False
    ar = dv.apply(lambda: "x")
    assert isinstance(ar, ipp.AsyncResult) and ar.get() == ["x"] * 4


def test_interactive_functions_see_engine_globals(rc: ipp.Client) -> None:
    dv = rc[:]
    dv.execute("engine_side = 10", block=True)

    @ipp.interactive
    def uses_engine_global() -> int:
        return engine_side * 2  # type: ignore[name-defined] # noqa: F821

    assert dv.apply_sync(uses_engine_global) == [20] * 4


def test_map_partitions_contiguously_and_keeps_order(rc: ipp.Client) -> None:
    dv = rc[:]
    assert dv.map_sync(lambda x: x * x, range(10)) == [x * x for x in range(10)]
    assert dv.map_sync(lambda x, y: x + y, [1, 2, 3], [10, 20, 30]) == [11, 22, 33]
    ar = dv.map_async(lambda x: x, range(7))
    assert list(ar) == list(range(7))


def test_push_pull_and_item_access(rc: ipp.Client) -> None:
    dv = rc[:]
    dv.push({"p": 1, "q": [1, 2]}, block=True)
    assert dv.pull("p", block=True) == [1] * 4
    assert dv.pull(["p", "q"], block=True) == [[1, [1, 2]]] * 4
    dv["r"] = {"k": (1, 2)}
    assert dv["r"] == [{"k": (1, 2)}] * 4
    assert rc[0]["r"] == {"k": (1, 2)}
    rc[1]["only_one"] = 1
    assert rc[1].pull("only_one").get() == 1


def test_a_replaced_value_is_freed_once_the_push_is_answered(rc: ipp.Client) -> None:
    e0 = rc[0]
    e0.execute("import weakref\nclass Held: pass\nheld = Held()\nref = weakref.ref(held)", block=True)
    e0.push({"held": 1}, block=True)
    deadline = time.monotonic() + 10
    while e0.apply_sync(ipp.interactive(lambda: ref() is not None)):  # type: ignore[name-defined] # noqa: F821
        assert time.monotonic() < deadline, "the replaced value is still alive on the engine"
        time.sleep(0.05)
    assert e0["held"] == 1


def test_scatter_of_large_lists_splits_them_exactly(rc: ipp.Client) -> None:
    dv = rc[:]
    data = list(range(400_003))  # each part is large enough to travel as a blob
    dv.scatter("big", data, block=True)
    assert [len(p) for p in dv.pull("big", block=True)] == [100_001, 100_001, 100_001, 100_000]
    assert dv.gather("big", block=True) == data


def test_scatter_gives_first_engines_the_longer_chunks(rc: ipp.Client) -> None:
    dv = rc[:]
    assert dv.scatter("chunk", list(range(10)), block=True) is None
    assert dv.pull("chunk", block=True) == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    assert dv.gather("chunk", block=True) == list(range(10))
    dv.scatter("one", [1, 2, 3, 4], flatten=True, block=True)
    assert dv["one"] == [1, 2, 3, 4]


def test_scatter_and_gather_numpy_arrays(rc: ipp.Client) -> None:
    dv = rc[:]
    data = np.arange(1_000_003, dtype=np.float64)
    dv.scatter("arr", data).get()
    lengths = dv.apply_sync(ipp.interactive(lambda: len(arr)))  # type: ignore[name-defined] # noqa: F821
    assert lengths == [250_001, 250_001, 250_001, 250_000]
    back = dv.gather("arr").get()
    assert isinstance(back, np.ndarray) and np.array_equal(back, data)


def test_stdout_and_stderr_are_captured_per_engine(rc: ipp.Client) -> None:
    ar = rc[:2].execute("import sys\nprint('out', 1)\nprint('err', file=sys.stderr)", block=True)
    assert ar.stdout == ["out 1\n", "out 1\n"]
    assert ar.stderr == ["err\n", "err\n"]
    meta = ar.metadata
    assert [m["engine_id"] for m in meta] == [0, 1]
    assert all(m["submitted"] <= m["started"] <= m["completed"] <= m["received"] for m in meta)


def test_sync_imports_imports_on_engines_too(rc: ipp.Client) -> None:
    dv = rc[:]
    with dv.sync_imports(quiet=True):
        import json

    assert dv.apply_sync(ipp.interactive(lambda: json.dumps([1]))) == ["[1]"] * 4  # type: ignore[name-defined]


def test_remote_and_parallel_decorators(rc: ipp.Client) -> None:
    dv = rc[:]

    @dv.remote(block=True)
    def getpid() -> int:
        import os

        return os.getpid()

    assert len(set(getpid())) == 4

    @dv.parallel(block=True)
    def double(x: int) -> int:
        return x * 2

    assert double(range(8)) == [x * 2 for x in range(8)]


def test_remote_exception_carries_the_traceback(rc: ipp.Client) -> None:
    def fails() -> None:
        raise ValueError("bad value on the engine")

    with pytest.raises(ipp.RemoteError) as info:
        rc[0].apply_sync(fails)
    err = info.value
    assert err.ename == "ValueError" and err.evalue == "bad value on the engine" and err.engine_id == 0
    assert "in fails" in err.traceback and "ValueError: bad value" in err.traceback
    assert "pxgrpc/engine" not in err.traceback

    with pytest.raises(ipp.CompositeError) as composite:
        rc[:].execute("1/0", block=True).get()
    assert len(composite.value.elist) == 4
    assert all(e.ename == "ZeroDivisionError" for e in composite.value.elist)  # type: ignore[attr-defined]
    assert "1/0" in "\n".join(composite.value.render_traceback())


def test_pull_of_an_unknown_variable_is_a_name_error(rc: ipp.Client) -> None:
    with pytest.raises(ipp.RemoteError) as info:
        rc[0].pull("no_such_variable", block=True)
    assert info.value.ename == "NameError" and "no_such_variable" in info.value.evalue


def test_bad_target_ids_are_refused(rc: ipp.Client) -> None:
    with pytest.raises(ipp.NoEnginesError, match="no engine 99"):
        rc[99]
    with pytest.raises(ipp.NoEnginesError, match="no engine 7"):
        rc[:].apply_sync(lambda: 1, **{}) if False else rc[:].execute("1", targets=[0, 7])


def test_get_with_timeout_raises_timeout_error_and_work_goes_on(rc: ipp.Client) -> None:
    ar = rc[3].apply_async(time.sleep, 1.0)
    with pytest.raises(ipp.TimeoutError):
        ar.get(timeout=0.05)
    with pytest.raises(TimeoutError):  # also the builtin
        ar.get(timeout=0.01)
    assert not ar.ready()
    assert ar.get(timeout=10) is None
    assert ar.wait(0) is True


def test_client_wait_and_queue_status(rc: ipp.Client) -> None:
    ars = [rc[i].apply_async(time.sleep, 0.1) for i in range(4)]
    assert rc.wait(ars, timeout=10)
    status = rc.queue_status()
    assert set(status) == {0, 1, 2, 3, "unassigned"}
    assert all(status[i]["queue"] == 0 and status[i]["completed"] > 0 for i in range(4))


def test_abort_drops_queued_tasks(rc: ipp.Client) -> None:
    busy = rc[0].apply_async(time.sleep, 0.5)
    queued = rc[0].apply_async(lambda: "never")
    time.sleep(0.1)
    queued.abort()
    with pytest.raises(ipp.TaskAborted):
        queued.get(timeout=10)
    assert busy.get(timeout=10) is None
    assert rc[0].apply_sync(lambda: "still fine") == "still fine"


def test_load_balanced_view_apply_and_map(rc: ipp.Client) -> None:
    lview = rc.load_balanced_view()
    assert lview.apply_sync(lambda: 3) == 3
    assert lview.map_sync(lambda x: x + 1, range(20)) == list(range(1, 21))
    assert sorted(lview.map(lambda x: x, range(9), ordered=False, block=True)) == list(range(9))
    with rc.executor() as ex:
        assert list(ex.map(abs, [-1, -2])) == [1, 2]
        assert ex.submit(pow, 2, 5).result(timeout=10) == 32


def test_wrong_token_is_unauthenticated(cluster4) -> None:  # type: ignore[no-untyped-def]
    cluster, _ = cluster4
    info = ipp.Client(cluster.connection_file).connection_info
    bad = type(info)(**{**info.__dict__, "token": "not-the-token"})
    with pytest.raises(ipp.AuthenticationError, match="refused our credentials"):
        ipp.Client(connection_info=bad)
    engine_token = type(info)(**{**info.__dict__, "token": info.engine_token})
    with pytest.raises(ipp.AuthenticationError):
        ipp.Client(connection_info=engine_token)


def test_a_client_reaches_a_controller_at_an_address_a_connection_was_refused_at_before(
    tmp_path: pathlib.Path,
) -> None:
    """gRPC fails a new channel at once while another channel's attempts to the same address
    wait out their backoff: a stopped cluster's port, reused by a new controller, refused the
    new cluster's client (seen once in CI). The client asks again, waiting for a connection."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"127.0.0.1:{port}"

    async def refused() -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(url, options=channel_options(None))
        for _ in range(5):
            with contextlib.suppress(grpc.aio.AioRpcError):
                await channel.unary_unary("/nobody/Nothing")(b"", timeout=1)
        return channel

    loop = asyncio.new_event_loop()
    stale = loop.run_until_complete(refused())  # (open, and waiting out its backoff)
    conn = tmp_path / "controller.json"
    controller = subprocess.Popen(
        [sys.executable, "-m", "pxgrpc.controller", "--port", str(port), "--file", str(conn)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not conn.exists():
            assert controller.poll() is None and time.monotonic() < deadline, "no controller"
            time.sleep(0.02)
        rc = ipp.Client(str(conn), timeout=10)
        assert rc.ids == []
        rc.close()
    finally:
        os.killpg(controller.pid, signal.SIGTERM)
        controller.wait(timeout=30)
        loop.run_until_complete(stale.close())
        loop.close()


def test_unreachable_controller_fails_fast_with_a_clear_error() -> None:
    info = ConnectionInfo(url="127.0.0.1:1", token="t", engine_token="e")
    t0 = time.monotonic()
    with pytest.raises(ipp.PxConnectionError, match=r"cannot reach the controller at 127\.0\.0\.1:1"):
        ipp.Client(connection_info=info, timeout=2)
    assert time.monotonic() - t0 < 30
