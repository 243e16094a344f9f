"""Where the CPU of a fan-out to many engines goes (issue 12's apply to all and push to all).

    python scripts/fanout_cpu.py                  # 64 engines, 50 calls of each kind
    python scripts/fanout_cpu.py --engines 16 --calls 20

With many engine processes on few cores, a call to all engines takes about the CPU it costs,
divided by the cores: what matters is how much CPU each engine, the client and the controller
spend per call. This VM's speed drifts by a third from one run to the next, and CPU per call
drifts with it less than wall time does. For `rc[:].apply_sync(noop)` and for `rc[:].push` of
an 8 MB array, back to back, it prints the wall time (median) and, per call, the CPU of the
engines' main threads (per engine: one task each), of the engines' other threads, of each of
the client's threads and of the controller's processes (psutil, per thread; the kernel counts
in clock ticks, so use enough calls).
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import psutil

import pxgrpc

MB = 1 << 20


def noop() -> None:
    """The task of the apply figure."""


def _thread_seconds(process: psutil.Process) -> dict[int, float]:
    return {t.id: t.user_time + t.system_time for t in process.threads()}


def measure(
    label: str, call: Callable[[], Any], calls: int, rc: pxgrpc.Client, controller: list[psutil.Process]
) -> None:
    """Run `call` `calls` times; print the wall median and the CPU per call by component."""
    engines = [psutil.Process(pid) for pid in rc[:].apply_sync(os.getpid)]
    me = psutil.Process()
    for _ in range(5):
        call()
    before = [_thread_seconds(p) for p in engines]
    mine = _thread_seconds(me)
    control = sum(sum(p.cpu_times()[:2]) for p in controller)
    walls = []
    for _ in range(calls):
        t0 = time.perf_counter()
        call()
        walls.append(time.perf_counter() - t0)
    after = [_thread_seconds(p) for p in engines]
    mine_after = _thread_seconds(me)
    control = sum(sum(p.cpu_times()[:2]) for p in controller) - control
    main = sum(a.get(p.pid, 0.0) - b.get(p.pid, 0.0) for p, a, b in zip(engines, after, before, strict=True))
    other = sum(sum(a.values()) - sum(b.values()) for a, b in zip(after, before, strict=True)) - main
    names = {t.native_id: t.name for t in threading.enumerate()}
    n = len(engines)
    print(f"{label}: {statistics.median(walls) * 1e3:.2f} ms a call (median of {calls}), {n} engines")
    print(f"  {'engines, main threads':<24}{_per_call(main, calls, n)}")
    print(f"  {'engines, other threads':<24}{_per_call(other, calls)}")
    for tid, seconds in sorted(mine_after.items()):
        spent = seconds - mine.get(tid, 0.0)
        if spent > 0:
            name = "client " + names.get(tid, str(tid))
            print(f"  {name:<24}{_per_call(spent, calls, n)}")
    print(f"  {'controller':<24}{_per_call(control, calls)}")


def _per_call(seconds: float, calls: int, engines: int = 0) -> str:
    text = f"{seconds / calls * 1e3:7.2f} ms a call"
    return text + (f"  ({seconds / calls / engines * 1e6:.0f} µs per engine)" if engines else "")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engines", type=int, default=64)
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    cluster = pxgrpc.Cluster(n=args.engines)
    rc = cluster.start_and_connect_sync()
    try:
        root = psutil.Process(cluster.controller.pid)
        controller = [root, *root.children(recursive=True)]
        dv = rc[:]
        value = np.random.default_rng(0).random(8 * MB // 8)

        def push() -> Any:
            return dv.push({"a": value}, block=True)

        measure("rc[:].apply_sync(noop)", lambda: dv.apply_sync(noop), args.calls, rc, controller)
        measure("rc[:].push({'a': 8 MB array})", push, args.calls, rc, controller)
    finally:
        cluster.stop_cluster_sync()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
