"""Tasks around a controller restart, on either path (relayed through the controller, or sent
straight to the engine): a task sent while the controller is down, or while its engine is not
back yet, runs once both are; a task running when the controller died completes. None of them
fails with ControllerRestarted: that answer is for tasks the dead controller held and lost."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

import pxgrpc
from pxgrpc.client import directlinks
from pxgrpc.controller.restore import EngineIds, state_file
from tests.conftest import ClusterFactory

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["direct", "relayed"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The path DirectView tasks take (the client reads PXGRPC_DIRECT_TASKS when it connects)."""
    monkeypatch.setenv("PXGRPC_DIRECT_TASKS", "on" if request.param == "direct" else "off")
    yield request.param


def _until(condition: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _ready(rc: pxgrpc.Client, path: str) -> None:
    """Every engine answers, and on the direct path its link is up."""
    links = rc._transport._links

    def up(engine_id: int) -> bool:
        return bool(rc[engine_id].apply_sync(int) == 0 and (path == "relayed" or links.usable(engine_id)))

    for engine_id in rc.ids:
        _until(lambda e=engine_id: up(e), what=f"engine {engine_id}'s direct link")


def _kill_controller(cluster: pxgrpc.Cluster, rc: pxgrpc.Client) -> None:
    """SIGKILL the controller (once it has saved the ids of its engines, which it does a moment
    after they register) and wait until the client knows its session stream is lost."""
    saved = state_file(cluster.connection_file)
    _until(lambda: EngineIds.load(saved).live == rc.ids, what="the engine ids to be saved")
    assert cluster.controller is not None
    cluster.controller.send_signal(signal.SIGKILL)
    cluster.controller.wait(10)
    _until(lambda: not rc._transport._session_up, what="the client to notice")


def _restore(cluster: pxgrpc.Cluster) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "pxgrpc.controller", "--file", str(cluster.connection_file)]
    command += ["--cluster-id", cluster.cluster_id, "--restore"]
    return subprocess.Popen(command, start_new_session=True)


def test_tasks_sent_while_the_controller_is_down_run_once_it_is_back(
    make_cluster: ClusterFactory,
    restored: list[subprocess.Popen[bytes]],
    path: str,
    paths: list[bool],
) -> None:
    """They wait in the client (relayed) or run at once (direct); either way they are not named
    in the resumed session as lost, and the restored controller holds a relayed one for an
    engine that is not back yet instead of refusing it."""
    cluster, rc = make_cluster(n=2, restart_controller=False)
    rc[:]["x"] = 3
    _ready(rc, path)
    _kill_controller(cluster, rc)
    paths.clear()
    pulled = rc[:].pull("x", block=False)
    assigned = rc[1].execute("y = x + 4", block=False)
    powers = [rc[0].apply_async(pow, 2, i) for i in range(5)]
    assert paths == ([True] * 7 if path == "direct" else [])  # (relayed: never tried)
    restored.append(_restore(cluster))
    assert pulled.get(timeout=60) == [3, 3]
    assigned.get(timeout=60)
    assert [ar.get(timeout=60) for ar in powers] == [1, 2, 4, 8, 16]
    assert rc[1].pull("y", block=True) == 7


def test_a_task_running_when_the_controller_dies_completes_though_its_engine_is_back_last(
    make_cluster: ClusterFactory,
    restored: list[subprocess.Popen[bytes]],
    path: str,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The client reconnects while the engine running the task is still away (stopped): the
    engine list it gets lacks that engine, which is no reason to give up on the task."""
    monkeypatch.setattr(directlinks, "ORPHAN_GRACE", 0.5)  # a wrong verdict would come quickly
    cluster, rc = make_cluster(n=2, restart_controller=False)
    _ready(rc, path)
    pid = rc[0].apply_sync(os.getpid)
    started, release = tmp_path / "started", tmp_path / "release"
    code = (
        f"import os, pathlib, time\npathlib.Path({str(started)!r}).touch()\n"
        f"while not os.path.exists({str(release)!r}):\n    time.sleep(0.01)\nreleased = True"
    )
    running = rc[0].execute(code, block=False)
    _until(started.exists, what="the task to start")  # (not only sent: a task on the wire is lost)
    os.kill(pid, signal.SIGSTOP)
    try:
        _kill_controller(cluster, rc)
        restored.append(_restore(cluster))
        _until(lambda: rc._transport._session_up, what="the client to reconnect")
        assert 0 not in rc.ids  # (the client is back first)
        time.sleep(1.5)  # (room for a wrong verdict on the task to come)
    finally:
        os.kill(pid, signal.SIGCONT)
    _until(lambda: rc.ids == [0, 1], what="engine 0 to come back")
    assert not running.done()
    release.touch()
    running.get(timeout=60)
    assert rc[0].pull("released", block=True) is True
    assert rc[0].apply_sync(os.getpid) == pid
