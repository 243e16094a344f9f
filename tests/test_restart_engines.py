"""Dead engines replaced under their ids (`restart_engines=True`), and tasks that kill engines."""

from __future__ import annotations

import os
import pathlib
import signal
import time

import pytest

import pxgrpc as ipp
from pxgrpc.launchers import EngineSpec, launcher_for

pytestmark = pytest.mark.timeout(90)


def wait_for_ids(rc: ipp.Client, ids: list[int], pids: dict[int, int] | None = None) -> dict[int, int]:
    """Until the engines are `ids`, none of them (still) the process in `pids`; their pids."""
    deadline = time.monotonic() + 30
    while True:
        engines = {e["id"]: e["pid"] for e in rc.engines}
        if sorted(engines) == ids and not any(engines[i] == pid for i, pid in (pids or {}).items()):
            return engines
        assert time.monotonic() < deadline, (engines, ids)
        time.sleep(0.05)


def _dying_task() -> object:
    def suicide(signum: int) -> None:  # (nested: pickled by value, engines cannot import tests)
        import os
        import sys

        print("about to die, last words on stderr", file=sys.__stderr__, flush=True)
        os.kill(os.getpid(), signum)

    return suicide


suicide = _dying_task()


def test_an_engine_killed_by_sigkill_is_replaced_under_its_id_and_its_task_says_why(make_cluster) -> None:  # type: ignore[no-untyped-def]
    _, rc = make_cluster(n=2, restart_engines=True)
    rc[1].execute("x = 42", block=True)
    before = wait_for_ids(rc, [0, 1])
    with pytest.raises(ipp.EngineError) as caught:
        rc[1].apply_sync(suicide, signal.SIGKILL)
    text = str(caught.value)
    assert "engine 1" in text and "SIGKILL" in text and "OOM killer" in text, text
    assert "about to die, last words on stderr" in text, text
    after = wait_for_ids(rc, [0, 1], {1: before[1]})
    assert after[0] == before[0]
    # A fresh namespace under the old id; the other engine kept its own.
    assert rc[1].apply_sync(lambda: "x" in globals()) is False
    assert rc[:].apply_sync(lambda: "alive") == ["alive", "alive"]


def test_an_engine_that_segfaults_is_replaced_and_its_task_names_sigsegv(make_cluster) -> None:  # type: ignore[no-untyped-def]
    _, rc = make_cluster(n=1, restart_engines=True)
    before = wait_for_ids(rc, [0])

    def segfault() -> None:
        import ctypes

        ctypes.string_at(0)

    with pytest.raises(ipp.EngineError) as caught:
        rc[0].apply_sync(segfault)
    text = str(caught.value)
    assert "SIGSEGV" in text and "Segmentation fault" in text, text  # (faulthandler's stderr line)
    wait_for_ids(rc, [0], before)
    assert rc[0].apply_sync(lambda: 1 + 1) == 2


def test_an_engine_that_exits_names_its_exit_status_and_is_replaced(make_cluster) -> None:  # type: ignore[no-untyped-def]
    _, rc = make_cluster(n=1, restart_engines=True)
    before = wait_for_ids(rc, [0])
    with pytest.raises(ipp.EngineError, match=r"engine 0 \(pid \d+ on .*\) exited with status 3"):
        rc[0].apply_sync(os._exit, 3)
    wait_for_ids(rc, [0], before)
    assert rc[0].apply_sync(lambda: "back") == "back"


def test_a_poison_task_fails_after_its_retries_and_the_cluster_stays_whole(make_cluster) -> None:  # type: ignore[no-untyped-def]
    _, rc = make_cluster(n=2, restart_engines=True)
    wait_for_ids(rc, [0, 1])
    lview = rc.load_balanced_view()
    lview.retries = 2
    with pytest.raises(ipp.EngineError) as caught:
        lview.apply_sync(suicide, signal.SIGKILL)
    text = str(caught.value)
    assert "tried on 3 engines" in text and "retries are spent" in text, text
    assert text.count("SIGKILL") == 3, text
    wait_for_ids(rc, [0, 1])
    assert sorted(rc[:].apply_sync(os.getpid)) == sorted(e["pid"] for e in rc.engines)
    assert lview.apply_sync(lambda: "still serving") == "still serving"


def test_without_restart_engines_a_poison_task_stops_after_its_retries(make_cluster) -> None:  # type: ignore[no-untyped-def]
    _, rc = make_cluster(n=3)
    lview = rc.load_balanced_view()
    lview.retries = 1
    with pytest.raises(ipp.EngineError, match="tried on 2 engines"):
        lview.apply_sync(suicide, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while len(rc.ids) != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(rc.ids) == 1
    assert lview.apply_sync(lambda: "the last engine serves") == "the last engine serves"


def test_restart_engines_is_refused_for_mpi_ranks_with_a_reason(tmp_path: pathlib.Path) -> None:
    spec = EngineSpec(
        connection_file=tmp_path / "c.json",
        engine_file=tmp_path / "e.json",
        n=2,
        cluster_id="mpi-restart",
        log_dir=tmp_path,
        restart=True,
    )
    with pytest.raises(ipp.PxError, match="a dead MPI rank cannot be replaced"):
        launcher_for("mpi").start(spec)
