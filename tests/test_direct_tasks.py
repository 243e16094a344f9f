"""DirectView tasks sent straight to their engine (`EngineData.Tasks`, on unless PXGRPC_DIRECT_TASKS=off):
they run in the engine's one queue, in this client's order whichever path each task takes, the
controller sees them (queue status, abort, interrupt), and tasks fall back to the relay when the
engine's endpoint cannot be reached."""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
from typing import Any

import numpy as np
import pytest

import pxgrpc
from pxgrpc import sharedmem
from pxgrpc.client import submit
from pxgrpc.client.directlinks import DirectLinks
from pxgrpc.client.errors import EngineError, PxError, RemoteError, TaskAborted
from tests.conftest import until

pytestmark = pytest.mark.timeout(90)

#: More than fits inline in a message: a push of it carries a blob, so it is relayed.
BIG = 200_000


@pytest.fixture(autouse=True, params=["lane", "stream"])
def direct_tasks_on(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Each test on both direct paths: the task lane (an engine on this host) and gRPC's
    `EngineData.Tasks` stream (the only one across hosts)."""
    monkeypatch.setenv("PXGRPC_DIRECT_TASKS", "on")
    monkeypatch.setenv("PXGRPC_TASK_LANE", "on" if request.param == "lane" else "off")


def _link_up(rc: pxgrpc.Client, engine_id: int = 0) -> None:
    """Submit until the engine's direct link is connected (the first tasks go by the relay)."""
    links = rc._transport._links
    until(lambda: rc[engine_id].apply_sync(int) == 0 and links.usable(engine_id) is not None, what="link")


def _wait_file_code(path: pathlib.Path) -> str:
    return f"import os, time\nwhile not os.path.exists({str(path)!r}): time.sleep(0.01)"


def _spin(rc: pxgrpc.Client, tmp_path: pathlib.Path) -> tuple[pxgrpc.AsyncResult, pathlib.Path]:
    """Start a task that spins on engine 0 until interrupted; the file it makes once it runs."""
    started = tmp_path / "started"
    spin = f"import pathlib, time\npathlib.Path({str(started)!r}).touch()\nwhile True: time.sleep(0.01)"
    return rc[0].execute(spin, block=False), started


def _running_and_queued(rc: pxgrpc.Client) -> tuple[int, int]:
    status = rc.queue_status(0)
    return status["tasks"], status["queue"]


def test_direct_tasks_run_and_the_controller_counts_them(make_cluster: Any, paths: list[bool]) -> None:
    _, rc = make_cluster(n=2)
    _link_up(rc)
    before = rc.queue_status()[0]["completed"]
    paths.clear()
    assert [rc[0].apply_sync(pow, 2, i) for i in range(20)] == [2**i for i in range(20)]
    rc[0].execute("a = 5", block=True)
    assert rc[0].pull("a", block=True) == 5
    assert all(paths) and len(paths) == 22
    until(lambda: rc.queue_status()[0]["completed"] >= before + 22, what="completed count")


def test_one_clients_tasks_on_one_engine_keep_their_order_across_paths(
    make_cluster: Any, paths: list[bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    # (On a task lane a large push would go on the lane too: have it relayed, to mix the paths.)
    monkeypatch.setattr(submit.Submitter, "_send_shared", lambda self, *args: False)
    _, rc = make_cluster(n=1)
    _link_up(rc)
    rc[0].execute("seen = []", block=True)
    paths.clear()
    results = []
    expected = []
    for i in range(40):
        if i % 5 == 0:
            # A large push goes through the controller; the executes just after it must wait for it.
            results.append(rc[0].push({"big": np.full(BIG, float(i))}, block=False))
            results.append(rc[0].execute("seen.append(int(big[0]))", block=False))
        else:
            results.append(rc[0].execute(f"seen.append({i})", block=False))
        expected.append(i)
    for ar in results:
        ar.get(timeout=30)
    assert rc[0].pull("seen", block=True) == expected
    assert any(paths) and not all(paths), paths


def test_queue_status_abort_and_interrupt_reach_direct_tasks(
    make_cluster: Any, paths: list[bool], tmp_path: pathlib.Path
) -> None:
    _, rc = make_cluster(n=1)
    _link_up(rc)
    paths.clear()
    release = tmp_path / "release"
    running = rc[0].execute(_wait_file_code(release), block=False)
    queued = rc[0].execute("after = 1", block=False)
    assert paths == [True, True]
    until(lambda: _running_and_queued(rc) == (1, 1), what="queue status of the direct tasks")
    assert rc.abort(queued) == queued.msg_ids
    release.touch()
    running.get(timeout=30)
    with pytest.raises(PxError):
        queued.get(timeout=30)
    assert "after" not in rc[0].apply_sync(lambda: list(globals()))
    # (The controller hears that the aborted task is over: it counts no more.)
    until(lambda: _running_and_queued(rc) == (0, 0), what="the aborted task to leave the queue status")

    started = tmp_path / "started"
    spin = f"import pathlib, time\npathlib.Path({str(started)!r}).touch()\nwhile True: time.sleep(0.01)"
    spinning = rc[0].execute(spin, block=False)
    until(lambda: rc.queue_status(0)["tasks"] == 1, what="the spinning task to be seen")
    # (a SIGINT that reaches the engine before the task runs finds it idle, and is ignored)
    until(started.exists, what="the spinning task to run")
    assert rc.interrupt(targets=[0]) == [0]
    with pytest.raises(RemoteError) as caught:
        spinning.get(timeout=30)
    assert caught.value.ename == "KeyboardInterrupt"
    assert rc[0].apply_sync(pow, 3, 2) == 9
    assert paths[-2:] == [True, True]


def test_an_interrupt_and_an_abort_reach_direct_tasks_as_soon_as_they_are_sent(
    make_cluster: Any, paths: list[bool], tmp_path: pathlib.Path
) -> None:
    """The engine tells the controller of a direct task only once it has waited or run for a
    while; its client's announcement lets an interrupt or abort reach it before that."""
    _, rc = make_cluster(n=1)
    _link_up(rc)
    paths.clear()
    spinning, started = _spin(rc, tmp_path)
    queued = rc[0].execute("after = 1", block=False)
    until(started.exists, what="the spinning task to run")
    assert rc.abort(queued) == queued.msg_ids
    assert rc.interrupt(targets=[0]) == [0]
    with pytest.raises(RemoteError) as caught:
        spinning.get(timeout=30)
    assert caught.value.ename == "KeyboardInterrupt"
    with pytest.raises(PxError):
        queued.get(timeout=30)
    assert "after" not in rc[0].apply_sync(lambda: list(globals()))
    assert paths[:2] == [True, True]


def test_an_abort_right_after_sending_drops_a_direct_task_the_controller_has_not_heard_of(
    make_cluster: Any, paths: list[bool], tmp_path: pathlib.Path
) -> None:
    """The client announces a direct task a few milliseconds after sending it: an abort that
    comes before (by task, or of all an engine's queued tasks) still drops it, as ipyparallel's
    does a task queued behind a running one."""
    _, rc = make_cluster(n=1)
    _link_up(rc)
    go = tmp_path / "go"
    busy = rc[0].execute(_wait_file_code(go), block=False)
    paths.clear()
    by_task = rc[0].execute("by_task = 1", block=False)
    by_task.abort()  # (returns [] or the id, whether the controller heard of it first or not)
    by_engine = rc[0].execute("by_engine = 1", block=False)
    rc.abort(targets=[0])
    kept = rc[0].execute("kept = 1", block=False)
    go.touch()
    busy.get(timeout=30)
    for aborted in (by_task, by_engine):
        with pytest.raises(TaskAborted):
            aborted.get(timeout=30)
    kept.get(timeout=30)
    rc[0].execute("names = sorted(globals())", block=True)
    names = rc[0].pull("names", block=True)
    assert "kept" in names and "by_task" not in names and "by_engine" not in names
    assert paths[:3] == [True, True, True]


def test_an_interrupt_reaches_a_direct_task_the_controller_has_not_heard_of(
    make_cluster: Any, paths: list[bool], tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the client's announcement (here held back) and the engine's own notice, an
    interrupt still reaches the engine that runs the client's task."""
    monkeypatch.setattr(submit, "ANNOUNCE_DELAY", 60.0)
    _, rc = make_cluster(n=1)
    _link_up(rc)
    paths.clear()
    spinning, started = _spin(rc, tmp_path)
    until(started.exists, what="the spinning task to run")
    assert spinning.interrupt() == [0]
    with pytest.raises(RemoteError) as caught:
        spinning.get(timeout=30)
    assert caught.value.ename == "KeyboardInterrupt"
    assert rc[0].apply_sync(pow, 3, 2) == 9
    assert paths[:1] == [True]


def test_a_direct_task_on_an_engine_frozen_before_it_could_tell_fails_with_the_reason(
    make_cluster: Any, paths: list[bool]
) -> None:
    """The engine never reads the task, so only the client's announcement tells the controller
    of it: the heartbeat's verdict reaches the task, not the client's guess after a grace."""
    _, rc = make_cluster(n=2, controller_args=["--heartbeat-timeout", "2"])
    _link_up(rc)
    pid = rc[0].apply_sync(os.getpid)
    os.kill(pid, signal.SIGSTOP)
    try:
        paths.clear()
        ar = rc[0].apply_async(lambda: "never answered")
        assert paths == [True]
        with pytest.raises(EngineError, match="no heartbeat"):
            ar.get(timeout=30)
        assert rc.ids == [1]
    finally:
        with contextlib.suppress(ProcessLookupError):  # (SIGKILL ends a stopped process too)
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("restart_engines", [False, True])
def test_a_direct_task_that_kills_its_engine_at_once_fails_with_the_controllers_account(
    make_cluster: Any, paths: list[bool], monkeypatch: pytest.MonkeyPatch, restart_engines: bool
) -> None:
    """The engine dies before it tells the controller of the task, and before the client's
    (late) announcement arrives: the controller still answers it with the death, quoting the
    supervisor's exit report where there is one."""
    monkeypatch.setattr(submit, "ANNOUNCE_DELAY", 0.3)  # (surely after the engine's death)
    _, rc = make_cluster(n=2, restart_engines=restart_engines)
    _link_up(rc)
    paths.clear()
    ar = rc[0].apply_async(os.kill, rc[0].apply_sync(os.getpid), signal.SIGKILL)
    with pytest.raises(EngineError) as caught:
        ar.get(timeout=30)
    assert paths == [True, True]
    text = str(caught.value)
    assert "engine 0 (pid" in text and "did not report the end" not in text, text
    assert ("SIGKILL" in text) == restart_engines, text
    assert rc[1].apply_sync(pow, 2, 3) == 8


def test_tasks_fall_back_to_the_relay_without_a_data_endpoint(
    make_cluster: Any, monkeypatch: pytest.MonkeyPatch, paths: list[bool]
) -> None:
    monkeypatch.setenv("PXGRPC_DATA_ENDPOINT", "off")
    cluster, _ = make_cluster(n=1)
    monkeypatch.delenv("PXGRPC_DATA_ENDPOINT")
    rc = pxgrpc.Client(cluster.connection_file)
    try:
        assert rc._transport._links.enabled
        assert [rc[0].apply_sync(pow, 2, i) for i in range(5)] == [1, 2, 4, 8, 16]
        assert paths and not any(paths)
    finally:
        rc.close()


def test_tasks_fall_back_to_the_relay_when_the_endpoint_is_unreachable(
    make_cluster: Any, paths: list[bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(DirectLinks, "prepare", lambda self, engine_ids: None)  # (no lane opened at connect)
    _, rc = make_cluster(n=1)
    # Nothing listens at either: the lane fails, then the Tasks stream, then tasks are relayed.
    rc._transport._datapath.set_urls(
        {0: "127.0.0.1:9"}, {0: sharedmem.host_key()}, {0: "@pxgrpc-lane-nothing"}
    )
    for i in range(5):
        assert rc[0].apply_sync(pow, 2, i) == 2**i
    until(lambda: rc._transport._links._links[0].broken, what="the link to give up")
    assert rc[0].execute("b = 2", block=True) is not None
    assert rc[0].pull("b", block=True) == 2
    assert not any(paths)
