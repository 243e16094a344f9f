"""Engines that die, controllers that go away: errors, never hangs."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time

import pytest
from raw_controller import RawController

import pxgrpc as ipp
from pxgrpc import wire

pytestmark = pytest.mark.timeout(60)


def wait_for_output(ar: ipp.AsyncResult, text: str) -> None:
    """Until `text` was printed by every task of `ar` (so the tasks run, not just queued)."""
    deadline = time.monotonic() + 20
    while not all(text in out for out in (ar.stdout if isinstance(ar.stdout, list) else [ar.stdout])):
        assert time.monotonic() < deadline, ar.stdout
        time.sleep(0.02)


def assert_engine_1_gone_and_the_others_serve(rc: ipp.Client) -> None:
    """Engine 1 of 3 has died: it leaves the client's list, and engines 0 and 2 still run tasks."""
    deadline = time.monotonic() + 10
    while rc.ids != [0, 2] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rc.ids == [0, 2]
    assert rc[:].apply_sync(lambda: "alive") == ["alive", "alive"]


def test_engine_killed_mid_task_fails_its_tasks_and_spares_the_others(make_cluster) -> None:  # type: ignore[no-untyped-def]
    _, rc = make_cluster(n=3)
    pid = rc[1].apply_sync(os.getpid)
    running = rc[1].apply_async(time.sleep, 30)
    queued = rc[1].apply_async(lambda: "queued behind the sleep")
    others = rc[[0, 2]].apply_async(time.sleep, 0.5)
    time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)

    with pytest.raises(ipp.EngineError, match="engine 1"):
        running.get(timeout=20)
    with pytest.raises(ipp.EngineError):
        queued.get(timeout=20)
    assert others.get(timeout=20) == [None, None]
    assert_engine_1_gone_and_the_others_serve(rc)
    with pytest.raises(ipp.NoEnginesError):
        rc[1].apply_sync(lambda: 1)


def test_multi_engine_call_reports_the_dead_engine_in_a_composite_error(make_cluster) -> None:  # type: ignore[no-untyped-def]
    _, rc = make_cluster(n=2)
    pids = rc[:].apply_sync(os.getpid)
    ar = rc[:].apply_async(time.sleep, 30)
    time.sleep(0.2)
    os.kill(pids[0], signal.SIGKILL)
    assert rc.interrupt(targets=[1]) == [1]
    with pytest.raises(ipp.CompositeError) as info:
        ar.get(timeout=20)
    kinds = sorted(type(e).__name__ for e in info.value.elist)
    assert kinds == ["EngineError", "RemoteError"]


def test_interrupt_with_sigterm_ends_the_engine_and_fails_its_task_while_others_serve(make_cluster) -> None:  # type: ignore[no-untyped-def]
    _, rc = make_cluster(n=3)
    running = rc[1].execute("import time\nprint('started', flush=True)\ntime.sleep(30)", block=False)
    others = rc[[0, 2]].apply_async(time.sleep, 1)
    wait_for_output(running, "started")

    assert running.interrupt(signal.SIGTERM) == [1]
    with pytest.raises(ipp.EngineError, match=r"engine 1 .*after an Interrupt sent it SIGTERM"):
        running.get(timeout=20)
    assert others.get(timeout=20) == [None, None]
    assert_engine_1_gone_and_the_others_serve(rc)


def test_interrupt_without_a_signal_number_raises_keyboard_interrupt_as_before(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster, rc = make_cluster(n=2)
    pids = rc[:].apply_sync(os.getpid)
    ar = rc[:].execute("import time\nprint('started', flush=True)\ntime.sleep(30)", block=False)
    wait_for_output(ar, "started")
    raw = RawController(cluster.connection_file)  # an older client: no signal_number
    try:
        outcome = raw.call("Interrupt", wire.pb.InterruptRequest(targets=wire.pb.Targets(all=True)))
    finally:
        raw.close()
    assert outcome.ok and sorted(outcome.replies[0].engine_ids) == [0, 1], outcome
    with pytest.raises(ipp.CompositeError) as info:
        ar.get(timeout=20)
    assert {e.ename for e in info.value.elist} == {"KeyboardInterrupt"}
    assert rc[:].apply_sync(os.getpid) == pids


def test_controller_going_away_fails_pending_work_instead_of_hanging(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster, _ = make_cluster(n=1)
    rc = ipp.Client(cluster.connection_file, reconnect_timeout=2)  # (no waiting for a comeback)
    try:
        ar = rc[0].apply_async(time.sleep, 30)
        time.sleep(0.1)
        os.killpg(cluster.controller.pid, signal.SIGKILL)  # (the supervisor too)
        with pytest.raises(ipp.PxConnectionError):
            ar.get(timeout=20)
        with pytest.raises(ipp.PxConnectionError):
            rc[0].apply_async(lambda: 1).get(timeout=20)
    finally:
        rc.close()


def test_a_cluster_stopped_on_purpose_fails_pending_work_quietly_without_reconnecting(
    make_cluster, caplog
) -> None:  # type: ignore[no-untyped-def]
    # A user's own Client (not the cluster's), as in a notebook whose cluster is stopped: the
    # controller tells it that it stops on purpose, so the client neither warns that it lost the
    # controller nor tries to reconnect, and its pending work fails saying so.
    cluster, _ = make_cluster(n=2)
    rc = ipp.Client(cluster.connection_file)  # (the default reconnect_timeout: 120 s)
    try:
        assert rc[:].apply_sync(lambda: 1) == [1, 1]  # (direct links open to both engines)
        ar = rc[0].apply_async(time.sleep, 30)
        time.sleep(0.2)  # (running)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="pxgrpc"):
            cluster.stop_cluster_sync()
            with pytest.raises((ipp.EngineError, ipp.PxConnectionError)):
                ar.get(timeout=20)  # (its engine was stopped: no waiting for reconnect_timeout)
            with pytest.raises(ipp.PxConnectionError, match="controller at"):
                rc[1].apply_async(lambda: 2).get(timeout=20)  # (at once: no reconnecting)
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert warnings == []
    finally:
        rc.close()


def test_a_frozen_engine_is_declared_dead_by_heartbeat(make_cluster) -> None:  # type: ignore[no-untyped-def]
    _, rc = make_cluster(n=2, controller_args=["--heartbeat-timeout", "2"])
    pid = rc[0].apply_sync(os.getpid)
    os.kill(pid, signal.SIGSTOP)
    try:
        ar = rc[0].apply_async(lambda: "never answered")
        with pytest.raises(ipp.EngineError, match="no heartbeat"):
            ar.get(timeout=20)
        assert rc.ids == [1]
    finally:
        with contextlib.suppress(ProcessLookupError):  # (SIGKILL ends a stopped process too)
            os.kill(pid, signal.SIGKILL)


def test_wait_for_engines_times_out_with_a_clear_error(make_cluster) -> None:  # type: ignore[no-untyped-def]
    _, rc = make_cluster(n=1)
    rc.wait_for_engines(1, timeout=5)
    with pytest.raises(ipp.TimeoutError, match="1 engines of 3"):
        rc.wait_for_engines(3, timeout=0.2)
