"""The measuring scripts still run (short modes; their figures are not checked: no timing
assertions in tests)."""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(180)

SCRIPTS = pathlib.Path(__file__).resolve().parent.parent / "scripts"


def run(*args: str) -> str:
    """Run a script in its own process group; on a timeout the whole group (its clusters) goes."""
    proc = subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=150)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == 0, err[-3000:]
    return out


def test_bench_runs_a_short_pxgrpc_only_table() -> None:
    out = run(str(SCRIPTS / "bench.py"), "--quick", "--no-ipp", "--only", "apply,push,gather")
    for label in ("cluster of 2 engines ready", "apply_sync(noop) round trip", "push 64 MB", "gather of"):
        assert label in out, out
    assert " -" not in out, out  # (no step before the call: each one was stamped)
    assert "all goals met:" in out


def test_bench_scale_runs_the_many_engine_table() -> None:
    out = run(str(SCRIPTS / "bench.py"), "--scale", "4", "--quick", "--no-ipp")
    for label in (
        "cluster ready",
        "push to all over push to one",
        "idle engine unique memory",
        "cluster stop",
    ):
        assert label in out, out


def test_bench_scale_measures_only_the_figures_asked_for() -> None:
    out = run(str(SCRIPTS / "bench.py"), "--scale", "2", "--quick", "--no-ipp", "--only", "apply")
    assert "rc[:].apply_sync(noop), all engines" in out, out
    assert "push 8 MB to all engines" not in out.split("engines, one host")[0], out


def test_where_time_goes_prints_the_floors_and_each_phase() -> None:
    out = run(str(SCRIPTS / "where_time_goes.py"), "--quick")
    for label in (
        "through one relay process",
        "pickle.loads of them",
        "controller has the task for engine",
        "rc[0].apply_sync(noop), direct on EngineData.Tasks",
        "rc[0].apply_sync(noop), on the engine's task lane",
        "engine 2 of 2 is done",
        "client has every result (decoded, joined)",
    ):
        assert label in out, out


def test_bench_launchers_prints_a_table_per_launcher() -> None:
    out = run(str(SCRIPTS / "bench_launchers.py"), "-n", "2", "--repeat", "1", "--launchers", "local,ssh")
    assert "median s" in out and "\nlocal " in out, out
    assert "ssh" in out and "skipped: not available here" in out, out


def test_fanout_cpu_runs_and_names_each_component() -> None:
    out = run(str(SCRIPTS / "fanout_cpu.py"), "--engines", "3", "--calls", "5")
    for label in ("rc[:].apply_sync(noop)", "rc[:].push", "engines, main threads", "controller"):
        assert label in out, out


def test_fanout_floor_runs_and_prints_the_ratio() -> None:
    for mode in ((), ("--messages",)):
        out = run(str(SCRIPTS / "fanout_floor.py"), "--engines", "3", "--mb", "1", "--calls", "3", *mode)
        for label in ("empty round trip to all", "push to one", "push to all / to one"):
            assert label in out, out


def test_plain_push_pull_runs_and_prints_each_figure() -> None:
    out = run(str(SCRIPTS / "plain_push_pull.py"), "--no-ipp", "--mb", "4", "--rounds", "2")
    for label in ("push, first", "pull, first", "push, later", "pull, later"):
        assert label in out, out
