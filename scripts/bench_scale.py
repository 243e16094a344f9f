"""pxgrpc against ipyparallel with many engines on one host (issue 12's table).

    python scripts/bench.py --scale 64            # both systems, 64 engines each
    python scripts/bench.py --scale 64 --no-ipp   # pxgrpc only (against the issue's figures)
    python scripts/bench.py --scale 256 --no-ipp  # 256 engines start, answer, idle, stop

The two systems run one after the other (two clusters of 64 engines at once would measure the
machine, not the systems). Each figure is the median of a few repetitions; the first transfer of
each kind on a fresh cluster is reported apart ("first"), since it is the one a user meets first.
The idle figures are taken after the cluster has been idle for a few seconds: the engines' unique
memory (USS, median over engines) and the controller's CPU share and resident memory.
"""

from __future__ import annotations

import gc
import logging
import os
import statistics
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psutil
from bench import IppSide, PxSide, Side, log

MB = 1 << 20

#: The issue's figures at 64 engines, used when ipyparallel is not measured.
REFERENCE = {
    "ready": 36.7,
    "apply": 165.0,
    "push_ratio": 34.0,
    "scatter_gather": 469.0,
    "uss": 43.0,
    "stop": 15.8,
}


@dataclass
class ScaleFigure:
    """One line of the scale table. `goal` is a factor over ipyparallel (`relative`) or a bound
    on pxgrpc's own figure."""

    label: str
    unit: str
    goal: float
    relative: bool
    samples: dict[str, list[float]] = field(default_factory=dict)
    first: dict[str, float] = field(default_factory=dict)

    def add(self, side: str, value: float) -> None:
        self.samples.setdefault(side, []).append(value)

    def median(self, side: str) -> float | None:
        values = self.samples.get(side)
        return statistics.median(values) if values else None

    def met(self, px: float | None, other: float | None) -> bool | None:
        if px is None or not self.goal:
            return None
        if self.relative:
            return None if not other else other / px >= self.goal
        return px <= self.goal


class IppScaleSide(IppSide):
    """ipyparallel with room to start many engines (its default gives them 60 s)."""

    def start(self, n: int) -> float:
        import ipyparallel

        t0 = time.perf_counter()
        self.cluster = ipyparallel.Cluster(n=n, log_level=logging.ERROR, engine_timeout=600)
        self.rc = self.cluster.start_and_connect_sync()
        self.rc.wait_for_engines(n)
        return time.perf_counter() - t0


def figures() -> dict[str, ScaleFigure]:
    return {
        "ready": ScaleFigure("cluster ready", "s", 10, True),
        "apply": ScaleFigure("rc[:].apply_sync(noop), all engines", "ms", 10, True),
        "push_one": ScaleFigure("push 8 MB to one engine", "ms", 0, False),
        "push_all": ScaleFigure("push 8 MB to all engines", "ms", 0, False),
        "push_ratio": ScaleFigure("  push to all over push to one", "x", 2, False),
        "scatter_gather": ScaleFigure("scatter + gather 100k ints", "ms", 4, True),
        "uss": ScaleFigure("idle engine unique memory (USS)", "MB", 20, False),
        "ctl_cpu": ScaleFigure("idle controller CPU", "%core", 0, False),
        "ctl_rss": ScaleFigure("idle controller RSS", "MB", 0, False),
        "stop": ScaleFigure("cluster stop", "s", 1, False),
    }


def timed_ms(fn: Any) -> float:
    t0 = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t0
    del result
    return seconds * 1e3


def idle_figures(side: Side, figs: dict[str, ScaleFigure], wait: float = 3.0) -> None:
    """Engine USS, controller CPU and RSS of the fresh cluster, after `wait` seconds idle."""
    engines = [psutil.Process(pid) for pid in side.rc[:].apply_sync(os.getpid)]
    controller = [psutil.Process(pid) for pid in side.controller_pids()]
    time.sleep(wait)
    uss = [p.memory_full_info().uss / MB for p in engines]
    figs["uss"].add(side.name, statistics.median(uss))
    before = sum(sum(p.cpu_times()[:2]) for p in controller)
    time.sleep(wait)
    after = sum(sum(p.cpu_times()[:2]) for p in controller)
    figs["ctl_cpu"].add(side.name, 100 * (after - before) / wait)
    figs["ctl_rss"].add(side.name, sum(p.memory_info().rss for p in controller) / MB)
    log(
        f"  {side.name}: idle USS median {statistics.median(uss):.1f} MB, controller CPU "
        f"{figs['ctl_cpu'].samples[side.name][-1]:.1f}%, RSS {figs['ctl_rss'].samples[side.name][-1]:.0f} MB"
    )


def measure_side(
    side: Side, n: int, figs: dict[str, ScaleFigure], reps: int, noop: Any, only: set[str]
) -> None:
    """Everything of one system, on one fresh cluster of `n` engines (`noop`: a function the
    engines can unpickle, i.e. one of the `__main__` script; `only`: the workloads to measure,
    of apply, push, scatter_gather, or all when empty)."""
    log(f"{side.name}: starting {n} engines")
    seconds = side.start(n)
    figs["ready"].add(side.name, seconds)
    log(f"  {side.name}: ready in {seconds:.2f} s")
    try:
        idle_figures(side, figs)
        rc = side.rc
        dv, e0 = rc[:], rc[0]
        arr = np.random.default_rng(0).random(8 * MB // 8)
        ints = list(range(100_000))

        def scatter_gather() -> Any:
            dv.scatter("x", ints, block=True)
            return dv.gather("x", block=True)

        def push_all() -> Any:
            return dv.push({"a": arr}, block=True)

        def push_one() -> Any:
            return e0.push({"a": arr}, block=True)

        wanted = only or {"apply", "push", "scatter_gather"}
        # First transfers on the fresh cluster, apart.
        if "push" in wanted:
            figs["push_all"].first[side.name] = timed_ms(push_all)
            figs["push_one"].first[side.name] = timed_ms(push_one)
        if "scatter_gather" in wanted:
            figs["scatter_gather"].first[side.name] = timed_ms(scatter_gather)
        if "apply" in wanted:
            figs["apply"].first[side.name] = timed_ms(lambda: dv.apply_sync(noop))
            for _ in range(reps * 4):
                figs["apply"].add(side.name, timed_ms(lambda: dv.apply_sync(noop)))
            side.forget()
        for _ in range(reps if "push" in wanted else 0):
            one, every = timed_ms(push_one), timed_ms(push_all)
            figs["push_one"].add(side.name, one)
            figs["push_all"].add(side.name, every)
            figs["push_ratio"].add(side.name, every / one)
            side.forget()
        for _ in range(reps if "scatter_gather" in wanted else 0):
            figs["scatter_gather"].add(side.name, timed_ms(scatter_gather))
            side.forget()
        dv.execute("a = x = None\ndel a, x", block=True)
        for key in ("apply", "push_one", "push_all", "push_ratio", "scatter_gather"):
            if figs[key].median(side.name) is not None:
                log(f"  {side.name}: {figs[key].label} {figs[key].median(side.name):.4g} {figs[key].unit}")
        gc.collect()
    finally:
        t0 = time.perf_counter()
        side.stop()
        figs["stop"].add(side.name, time.perf_counter() - t0)
        log(f"  {side.name}: stopped in {figs['stop'].samples[side.name][-1]:.2f} s")


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def print_table(n: int, figs: dict[str, ScaleFigure], have_ipp: bool) -> None:
    other = "ipyparallel" if have_ipp else "ipp (ref.)"
    print(f"\n{n} engines, one host, {os.cpu_count()} cores; medians (first transfer apart)")
    print(
        f"{'figure':<40} {'unit':>6} {'pxgrpc':>9} {'(first)':>9} {other:>11} {'(first)':>9} "
        f"{'ipp/px':>7} {'goal':>8}  met"
    )
    print("-" * 112)
    for key, fig in figs.items():
        px = fig.median("pxgrpc")
        ipp = fig.median("ipyparallel") if have_ipp else REFERENCE.get(key) if n == 64 else None
        ratio = f"{ipp / px:.2f}" if px and ipp else "-"
        goal = ""
        if fig.goal:
            goal = f">={fig.goal:g}x" if fig.relative else f"<={fig.goal:g}"
        met = fig.met(px, ipp)
        print(
            f"{fig.label:<40} {fig.unit:>6} {_num(px):>9} {_num(fig.first.get('pxgrpc')):>9} "
            f"{_num(ipp):>11} {_num(fig.first.get('ipyparallel')):>9} {ratio:>7} {goal:>8}  "
            f"{'' if met is None else 'yes' if met else 'NO'}"
        )
    if not have_ipp and n != 64:
        print("(the issue's ipyparallel figures are for 64 engines: no comparison at this count)")


def main(n: int, have_ipp: bool, quick: bool, noop: Any, only: Collection[str] = ()) -> int:
    wanted = set(only)
    unknown = wanted - {"apply", "push", "scatter_gather"}
    if unknown:
        raise SystemExit(
            f"--only with --scale: unknown figures {sorted(unknown)} (apply, push, scatter_gather)"
        )
    reps = 3 if quick else 5
    figs = figures()
    sides: list[Side] = [PxSide(), *([IppScaleSide()] if have_ipp else [])]
    print(f"scale bench: {n} engines per system, {reps} repetitions", flush=True)
    for side in sides:
        measure_side(side, n, figs, reps, noop, wanted)
    print_table(n, figs, have_ipp)
    return 0
