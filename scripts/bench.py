"""pxgrpc against ipyparallel, side by side: same machine, same run, same engine count.

    python scripts/bench.py            # the full run (a few minutes)
    python scripts/bench.py --quick    # a short run: fewer repetitions, smaller workloads
    python scripts/bench.py --no-ipp   # pxgrpc only (compared with the issue's reference figures)
    python scripts/bench.py --scale 64 # many engines: issue 12's table (scripts/bench_scale.py)

Every figure of the speed table is measured on both systems, alternating between them repetition
by repetition (after unmeasured warm-up runs), and printed as the median of the repetitions with
the ratio pxgrpc/ipyparallel and whether the goal is met. Before each repetition the bench waits
until every process of both clusters, and this one, is idle, and ipyparallel's client forgets
finished tasks: leftovers of one measurement must not slow the next. Peak RSS of the controller and of an
engine is sampled (psutil) during 64 MB and 1 GB pushes. A scaling series follows: load-balanced
throughput with 1, 2, 4 and 8 engines, and round-trip latency with 1-64 client threads (a PNG
plot when matplotlib is installed).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psutil

import pxgrpc

MB = 1 << 20


def noop() -> None:
    """The task of the round-trip figures."""


def ident(x: Any) -> Any:
    """The function of the map figures."""
    return x


# --- the two systems ------------------------------------------------------------------------------


class Side:
    """One system under test: how to start a local cluster of n engines and connect to it."""

    name = ""

    def __init__(self) -> None:
        self.cluster: Any = None
        self.rc: Any = None

    def start(self, n: int) -> float:
        """Start a cluster of `n` engines and connect; return the seconds until all are ready."""
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def controller_pids(self) -> list[int]:
        """The controller's processes (ipyparallel runs its schedulers as child processes)."""
        raise NotImplementedError

    def engine_pid(self) -> int:
        return int(self.rc[0].apply_sync(os.getpid))

    def forget(self) -> None:
        """Drop what the client keeps of finished tasks (pxgrpc keeps nothing)."""

    def processes(self) -> list[psutil.Process]:
        """The cluster's processes: its controller's and its engines'."""
        pids = [*self.controller_pids(), *self.rc[:].apply_sync(os.getpid)]
        return [psutil.Process(pid) for pid in pids]


class PxSide(Side):
    name = "pxgrpc"

    def start(self, n: int) -> float:
        t0 = time.perf_counter()
        self.cluster = pxgrpc.Cluster(n=n)
        self.rc = self.cluster.start_and_connect_sync()
        return time.perf_counter() - t0

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop_cluster_sync()
        self.cluster = self.rc = None

    def controller_pids(self) -> list[int]:
        # (`Cluster.controller` is the controller's supervisor: the controller is its child.)
        root = psutil.Process(self.cluster.controller.pid)
        return [root.pid, *(p.pid for p in root.children(recursive=True))]


class IppSide(Side):
    name = "ipyparallel"

    def start(self, n: int) -> float:
        import ipyparallel

        t0 = time.perf_counter()
        self.cluster = ipyparallel.Cluster(n=n, log_level=logging.ERROR)
        self.rc = self.cluster.start_and_connect_sync()
        self.rc.wait_for_engines(n)
        return time.perf_counter() - t0

    def stop(self) -> None:
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.rc.close()
            self.cluster.stop_cluster_sync()
        self.cluster = self.rc = None

    def forget(self) -> None:
        # ipyparallel's client and hub keep every task's result, metadata and history. Left to
        # grow, they make every full garbage collection in this process (whichever system
        # triggers it) walk hundreds of thousands of objects: small-task figures of both
        # systems would then depend on the order of the workloads.
        self.rc.purge_everything()

    def controller_pids(self) -> list[int]:
        root = psutil.Process(self.cluster.controller.pid)
        return [root.pid, *(p.pid for p in root.children(recursive=True))]


# --- measuring ------------------------------------------------------------------------------------


@dataclass
class Figure:
    """One line of the speed table."""

    label: str
    unit: str
    higher_is_better: bool
    goal: float  # required advantage of pxgrpc over ipyparallel (a factor)
    reference: float  # the ipyparallel 9.2.0 figure, used when ipyparallel is absent
    samples: dict[str, list[float]] = field(default_factory=dict)

    def add(self, side: str, value: float) -> None:
        self.samples.setdefault(side, []).append(value)

    def median(self, side: str) -> float | None:
        values = self.samples.get(side)
        return statistics.median(values) if values else None

    def advantage(self) -> tuple[float | None, bool]:
        """(pxgrpc's advantage as a factor >1 when better, whether it is against the reference)."""
        px = self.median("pxgrpc")
        ipp = self.median("ipyparallel")
        against_reference = ipp is None
        other = self.reference if ipp is None else ipp
        if px is None or not px or not other:
            return None, against_reference
        return (px / other if self.higher_is_better else other / px), against_reference


def rate(count: float, fn: Callable[[], Any]) -> float:
    """count / seconds that fn() takes."""
    return count / elapsed(fn)


def elapsed(fn: Callable[[], Any]) -> float:
    """Seconds that fn() takes, up to its return: freeing what it returned is not timed (a
    gathered list of a million ints takes 7 ms to free; ipyparallel's client keeps it cached)."""
    t0 = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t0
    del result
    return seconds


def median_latency_ms(fn: Callable[[], Any], calls: int) -> float:
    for _ in range(min(10, calls)):
        fn()  # warm-up
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


class PeakRSS:
    """Samples the resident set size of some processes in a thread; keeps the peak of their sum."""

    def __init__(self, pids: list[int], interval: float = 0.002) -> None:
        self.procs = [psutil.Process(p) for p in pids]
        self.interval = interval
        self.baseline = self._sample()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _sample(self) -> int:
        total = 0
        for proc in self.procs:
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())


@dataclass
class Config:
    reps: int
    ready_reps: int
    rt_calls: int
    map_items: int
    dv_calls: int
    big_push_mb: int
    scaling_engines: tuple[int, ...]
    scaling_threads: tuple[int, ...]
    scaling_calls: int


FULL = Config(
    reps=5,
    ready_reps=5,
    rt_calls=300,
    map_items=5000,
    dv_calls=2500,
    big_push_mb=1024,
    scaling_engines=(1, 2, 4, 8),
    scaling_threads=(1, 2, 4, 8, 16, 32, 64),
    scaling_calls=400,
)
QUICK = Config(
    reps=3,
    ready_reps=1,
    rt_calls=100,
    map_items=1000,
    dv_calls=500,
    big_push_mb=256,
    scaling_engines=(1, 2, 4),
    scaling_threads=(1, 4, 16, 64),
    scaling_calls=200,
)


def make_figures(cfg: Config) -> dict[str, Figure]:
    return {
        "ready": Figure("local cluster of 2 engines ready", "s", False, 4, 6.5),
        "apply": Figure("rc[0].apply_sync(noop) round trip", "ms", False, 5, 2.8),
        "execute": Figure("rc[0].execute('a = 1', block=True)", "ms", False, 5, 3.7),
        "lbmap": Figure(f"lview.map_sync(ident, range({cfg.map_items}))", "tasks/s", True, 20, 490),
        "lbmap100": Figure("  the same, chunksize=100", "tasks/s", True, 1.5, 58000),
        "dvapply": Figure(f"rc[:].apply_async(noop) x{cfg.dv_calls}, get all", "tasks/s", True, 10, 670),
        "push_first": Figure("push 64 MB array, first on a fresh cluster", "MB/s", True, 3, 200),
        "push": Figure("push 64 MB array to one engine, later", "MB/s", True, 3, 220),
        "pull_first": Figure("pull of the same, first on a fresh cluster", "MB/s", True, 3, 200),
        "pull": Figure("pull of the same, later", "MB/s", True, 3, 300),
        "scatter": Figure("scatter 1,000,000-int list over 2 engines", "ms", False, 2, 66),
        "gather": Figure("gather of the same", "ms", False, 2, 51),
        "scatter80": Figure("scatter 80 MB float64 array over 2 engines", "ms", False, 2, 300),
        "gather80": Figure("gather of the same", "ms", False, 2, 250),
    }


def workloads(rc: Any, cfg: Config) -> dict[str, Callable[[], float]]:
    """Each figure's measurement for one repetition on a connected client."""
    arr64 = np.random.default_rng(0).random(64 * MB // 8)
    arr80 = np.random.default_rng(1).random(80 * MB // 8)
    ints = list(range(1_000_000))
    lview = rc.load_balanced_view()
    dv = rc[:]
    e0 = rc[0]
    # Every engine task of a multi-engine apply counts: x calls on 2 engines are 2x tasks.
    tasks_per_call = len(rc.ids)

    def dv_apply() -> None:
        ars = [dv.apply_async(noop) for _ in range(cfg.dv_calls)]
        for ar in ars:
            ar.get()

    def pull() -> float:
        e0.push({"a": arr64}, block=True)
        mbps = rate(64, lambda: e0.pull("a", block=True))
        e0.execute("del a", block=True)
        return mbps

    def gather() -> float:
        dv.scatter("x", ints, block=True)
        return elapsed(lambda: dv.gather("x", block=True)) * 1e3

    def gather80() -> float:
        dv.scatter("y", arr80, block=True)
        ms = elapsed(lambda: dv.gather("y", block=True)) * 1e3
        dv.execute("del y", block=True)
        return ms

    return {
        "apply": lambda: median_latency_ms(lambda: e0.apply_sync(noop), cfg.rt_calls),
        "execute": lambda: median_latency_ms(lambda: e0.execute("a = 1", block=True), cfg.rt_calls),
        "lbmap": lambda: rate(cfg.map_items, lambda: lview.map_sync(ident, range(cfg.map_items))),
        "lbmap100": lambda: rate(
            cfg.map_items, lambda: lview.map_sync(ident, range(cfg.map_items), chunksize=100)
        ),
        "dvapply": lambda: rate(cfg.dv_calls * tasks_per_call, dv_apply),
        "push": lambda: rate(64, lambda: e0.push({"a": arr64}, block=True)),
        "pull": pull,
        "scatter": lambda: elapsed(lambda: dv.scatter("x", ints, block=True)) * 1e3,
        "gather": gather,
        "scatter80": lambda: elapsed(lambda: dv.scatter("y", arr80, block=True)) * 1e3,
        "gather80": gather80,
    }


# --- the run --------------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def measure_ready(sides: list[Side], figures: dict[str, Figure], cfg: Config) -> None:
    """Start and stop clusters alternately; the last ones stay up for the other figures.

    On each fresh cluster, the first push of a 64 MB array and its first pull are measured too
    (the `_first` figures): connections, buffers and the engine's allocator are all cold.
    """
    arr64 = np.random.default_rng(0).random(64 * MB // 8)
    for rep in range(cfg.ready_reps):
        for side in sides if rep % 2 == 0 else sides[::-1]:
            seconds = side.start(2)
            figures["ready"].add(side.name, seconds)
            first = ""
            if "push_first" in figures or "pull_first" in figures:
                e0 = side.rc[0]
                e0.apply_sync(noop)  # (the engine is up and has run a task: only the data is first)
                settle([psutil.Process(), *side.processes()])
                push = rate(64, lambda e0=e0: e0.push({"first": arr64}, block=True))
                pull = rate(64, lambda e0=e0: e0.pull("first", block=True))
                e0.execute("del first", block=True)
                figures["push_first"].add(side.name, push)
                figures["pull_first"].add(side.name, pull)
                first = f"; first push {push:.0f} MB/s, first pull {pull:.0f} MB/s"
            log(f"  {side.name}: cluster ready in {seconds:.2f} s{first}")
            if rep < cfg.ready_reps - 1:
                side.stop()


#: Unmeasured runs of each figure first (both systems): connections, caches and the allocator
#: warm up over the first transfers of a large array.
WARMUP = {"push": 3, "pull": 3, "scatter80": 2, "gather80": 2}
#: Figures that take a few tens of ms get more repetitions: their run-to-run spread is wide.
MORE_REPS = {"scatter": 3, "gather": 3}


def settle(processes: list[psutil.Process], window: float = 0.1, timeout: float = 10.0) -> None:
    """Wait until these processes together use under 5% of a core over `window` seconds.

    Work left over from the previous measurement would otherwise run during the next one,
    whichever system that measures: ipyparallel's hub catches up after a burst, and a burst of
    ipyparallel tasks leaves cyclic garbage in this process whose collection, when the next burst
    triggers it, took up to 0.45 s. So this first collects garbage, then waits.
    """
    gc.collect()  # (the garbage of one system's burst must not be collected in the other's)
    deadline = time.monotonic() + timeout

    def cpu() -> float:
        total = 0.0
        for proc in processes:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    while time.monotonic() < deadline:
        before = cpu()
        time.sleep(window)
        if cpu() - before < 0.05 * window:
            return
    log(f"  (still busy after {timeout:.0f} s: measuring anyway)")


def measure_table(sides: list[Side], figures: dict[str, Figure], cfg: Config) -> None:
    loads = {side.name: workloads(side.rc, cfg) for side in sides}
    # This process too: a client's own threads may still be busy with the last burst.
    everyone = [psutil.Process(), *(proc for side in sides for proc in side.processes())]
    for key in [k for k in loads[sides[0].name] if k in figures]:
        for side in sides:
            for _ in range(WARMUP.get(key, 1)):
                loads[side.name][key]()
            side.forget()
        for rep in range(cfg.reps * MORE_REPS.get(key, 1)):
            for side in sides if rep % 2 == 0 else sides[::-1]:
                settle(everyone)
                value = loads[side.name][key]()
                side.forget()
                figures[key].add(side.name, value)
            gc.collect()
        medians = ", ".join(f"{s.name} {figures[key].median(s.name):.4g}" for s in sides)
        log(f"  {figures[key].label}: {medians} {figures[key].unit}")


@dataclass
class MemoryRow:
    side: str
    size_mb: int
    seconds: float
    controller: tuple[int, int]  # baseline, peak (bytes)
    engine: tuple[int, int]


def measure_memory(sides: list[Side], cfg: Config) -> list[MemoryRow]:
    log("memory during pushes")
    rows = []
    for size_mb in (64, cfg.big_push_mb):
        arr = np.ones(size_mb * MB // 8)
        for side in sides:
            e0 = side.rc[0]
            with PeakRSS(side.controller_pids()) as ctl, PeakRSS([side.engine_pid()]) as eng:
                seconds = elapsed(lambda e0=e0, arr=arr: e0.push({"big": arr}, block=True))
            e0.execute("del big", block=True)
            rows.append(
                MemoryRow(side.name, size_mb, seconds, (ctl.baseline, ctl.peak), (eng.baseline, eng.peak))
            )
            log(f"  {side.name}: push {size_mb} MB in {seconds:.2f} s")
        del arr
        gc.collect()
    return rows


def scaling_throughput(side: Side, cfg: Config, reps: int) -> list[tuple[int, float]]:
    """Load-balanced tasks/s (default chunksize) with each engine count."""
    rows = []
    for n in cfg.scaling_engines:
        side.start(n)
        try:
            lview = side.rc.load_balanced_view()
            lview.map_sync(ident, range(100))
            items = range(cfg.map_items)
            rates = [rate(len(items), lambda lv=lview, xs=items: lv.map_sync(ident, xs)) for _ in range(reps)]
            rows.append((n, statistics.median(rates)))
            log(f"  {side.name}: {n} engines {rows[-1][1]:.0f} tasks/s")
        finally:
            side.stop()
    return rows


def _round_trips(lview: Any, calls: int, latencies: list[float], lock: threading.Lock) -> None:
    mine = []
    for _ in range(calls):
        t0 = time.perf_counter()
        lview.apply_sync(noop)
        mine.append(time.perf_counter() - t0)
    with lock:
        latencies.extend(mine)


def scaling_latency(side: Side, cfg: Config) -> list[tuple[int, float, float, float]]:
    """(threads, median ms, p90 ms, calls/s) of lview.apply_sync(noop) from concurrent threads.

    The threads share one Client: pxgrpc's Client is thread-safe (ipyparallel's is not).
    """
    rows = []
    side.start(2)
    try:
        lview = side.rc.load_balanced_view()
        for threads in cfg.scaling_threads:
            calls = max(10, cfg.scaling_calls // threads)
            latencies: list[float] = []
            lock = threading.Lock()
            pool = [
                threading.Thread(target=_round_trips, args=(lview, calls, latencies, lock))
                for _ in range(threads)
            ]
            t0 = time.perf_counter()
            for th in pool:
                th.start()
            for th in pool:
                th.join()
            wall = time.perf_counter() - t0
            latencies.sort()
            median, p90 = statistics.median(latencies), latencies[int(0.9 * len(latencies))]
            rows.append((threads, median * 1e3, p90 * 1e3, len(latencies) / wall))
            log(f"  {side.name}: {threads} threads median {median * 1e3:.2f} ms, {rows[-1][3]:.0f} calls/s")
    finally:
        side.stop()
    return rows


# --- printing -------------------------------------------------------------------------------------


def print_table(figures: dict[str, Figure], have_ipp: bool) -> list[str]:
    """Print the table; the labels of the figures that miss their goal."""
    other = "ipyparallel" if have_ipp else "ipp (ref.)"
    print(
        f"\n{'figure':<44} {'unit':>7} {'pxgrpc':>9} {other:>11} {'px/ipp':>7} {'better':>7} {'goal':>6}  met"
    )
    print("-" * 104)
    missed = []
    for fig in figures.values():
        px = fig.median("pxgrpc")
        ipp = fig.median("ipyparallel") if have_ipp else fig.reference
        adv, _ = fig.advantage()
        met = adv is not None and adv >= fig.goal
        if not met:
            missed.append(fig.label.strip())
        ratio = f"{px / ipp:.3g}" if px and ipp else "-"
        print(
            f"{fig.label:<44} {fig.unit:>7} {_num(px):>9} {_num(ipp):>11} {ratio:>7} "
            f"{(f'{adv:.1f}x' if adv else '-'):>7} {f'{fig.goal:g}x':>6}  {'yes' if met else 'NO'}"
        )
    return missed


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def print_memory(rows: list[MemoryRow]) -> None:
    print(
        f"\n{'push':>8} {'system':<12} {'seconds':>8} {'MB/s':>7}  {'controller RSS MB base/peak(+)':>31}"
        f"  {'engine RSS MB base/peak(+)':>27}"
    )
    print("-" * 100)
    for r in rows:
        ctl, eng = _rss(r.controller), _rss(r.engine)
        speed = r.size_mb / r.seconds
        print(f"{r.size_mb:>6}MB {r.side:<12} {r.seconds:>8.2f} {speed:>7.0f}  {ctl:>31}  {eng:>27}")
    print(
        "(controller RSS is the sum over its processes: ipyparallel runs its schedulers as child processes)"
    )


def _rss(base_peak: tuple[int, int]) -> str:
    base, peak = base_peak
    return f"{base / MB:.0f}/{peak / MB:.0f} (+{(peak - base) / MB:.0f})"


def print_scaling(throughput: dict[str, list[tuple[int, float]]], latency: dict[str, list[Any]]) -> None:
    print("\nload-balanced map throughput (tasks/s, default chunksize) by engine count")
    names = list(throughput)
    print(f"{'engines':>8} " + " ".join(f"{n:>12}" for n in names))
    for i, (n, _) in enumerate(throughput[names[0]]):
        print(f"{n:>8} " + " ".join(f"{throughput[name][i][1]:>12.0f}" for name in names))
    for name, rows in latency.items():
        print(f"\n{name}: lview.apply_sync(noop) latency with concurrent client threads (one shared Client)")
        print(f"{'threads':>8} {'median ms':>10} {'p90 ms':>8} {'calls/s':>9}")
        for threads, med, p90, cps in rows:
            print(f"{threads:>8} {med:>10.2f} {p90:>8.2f} {cps:>9.0f}")


def plot(throughput: dict[str, list[tuple[int, float]]], latency: dict[str, list[Any]], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plot")
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, rows in throughput.items():
        left.plot([r[0] for r in rows], [r[1] for r in rows], marker="o", label=name)
    left.set(xlabel="engines", ylabel="tasks/s", title="load-balanced map throughput", yscale="log")
    left.legend()
    for name, rows in latency.items():
        right.plot([r[0] for r in rows], [r[1] for r in rows], marker="o", label=f"{name} median")
        right.plot(
            [r[0] for r in rows], [r[2] for r in rows], marker=".", linestyle="--", label=f"{name} p90"
        )
    right.set(xlabel="client threads", ylabel="ms", title="apply_sync latency", xscale="log")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"\nplot: {path}")


def have_ipyparallel() -> bool:
    try:
        import ipyparallel  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="a short run (fewer repetitions, smaller workloads)"
    )
    parser.add_argument("--no-ipp", action="store_true", help="measure pxgrpc only")
    parser.add_argument("--no-scaling", action="store_true", help="skip the scaling series")
    parser.add_argument("--plot", default="bench-scaling.png", help="where to write the scaling plot")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated figures to measure (e.g. push,pull); skips memory and scaling. With "
        "--scale: apply, push, scatter_gather (the start, idle and stop figures always)",
    )
    parser.add_argument(
        "--scale", type=int, default=0, metavar="N", help="the many-engine table with N engines instead"
    )
    args = parser.parse_args(argv)
    if args.scale:
        import bench_scale

        only = {key for key in args.only.split(",") if key}
        return bench_scale.main(args.scale, have_ipyparallel() and not args.no_ipp, args.quick, noop, only)
    cfg = QUICK if args.quick else FULL
    have_ipp = have_ipyparallel() and not args.no_ipp
    sides: list[Side] = [PxSide(), *([IppSide()] if have_ipp else [])]
    figures = make_figures(cfg)
    only = [key for key in args.only.split(",") if key]
    if only:
        keep = ["ready", *(["push_first", "pull_first"] if {"push", "pull"} & set(only) else []), *only]
        figures = {key: figures[key] for key in keep if key in figures}
    print(
        f"pxgrpc {pxgrpc.__version__} vs "
        f"{'ipyparallel ' + __import__('ipyparallel').__version__ if have_ipp else 'the reference figures'}; "
        f"{os.cpu_count()} cores, 2 engines; medians of {cfg.reps} repetitions"
        f"{' (--quick)' if args.quick else ''}",
        flush=True,
    )
    try:
        log("cluster start-up")
        measure_ready(sides, figures, cfg)
        log("workloads (alternating)")
        measure_table(sides, figures, cfg)
        memory = [] if only else measure_memory(sides, cfg)
    finally:
        for side in sides:
            side.stop()
    missed = print_table(figures, have_ipp)
    if memory:
        print_memory(memory)
    if not args.no_scaling and not only:
        log("scaling series")
        # ipyparallel needs ~10 s per run of this workload: one repetition each.
        throughput = {
            side.name: scaling_throughput(side, cfg, 3 if side.name == "pxgrpc" else 1) for side in sides
        }
        latency = {sides[0].name: scaling_latency(sides[0], cfg)}
        print_scaling(throughput, latency)
        plot(throughput, latency, args.plot)
    # (The int-list scatter/gather rows miss theirs in every run: creating and pickling a
    # million Python ints is the same work in both systems; see the README.)
    print(f"\nall goals met: {'yes' if not missed else 'NO, not: ' + '; '.join(missed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
