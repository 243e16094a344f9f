"""The README's headline transfer figures, the plain way: a fresh 2-engine cluster of each system,
one after the other, and a 64 MB array pushed to one engine and pulled back, in turns.

    python scripts/plain_push_pull.py              # pxgrpc, then ipyparallel, and the ratios
    python scripts/plain_push_pull.py --no-ipp     # pxgrpc alone

No warm-up, no waiting for idle processes, no collection between transfers (`scripts/bench.py`
does all that, to compare like with like): what a user's first script sees. The first push and
pull of each cluster are reported apart; "later" is the median of the next `--rounds` push-pull
pairs, each pull right after the push that replaced the value before it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import numpy as np

MB = 1 << 20


def measure(rc: Any, array: np.ndarray, rounds: int) -> dict[str, float]:
    """Seconds of the first push and pull to engine 0, and the medians of the later ones."""
    engine = rc[0]

    def push() -> float:
        t0 = time.perf_counter()
        engine.push({"a": array}, block=True)
        return time.perf_counter() - t0

    def pull() -> float:
        t0 = time.perf_counter()
        back = engine.pull("a", block=True)
        seconds = time.perf_counter() - t0
        if back.shape != array.shape:
            raise SystemExit(f"pulled an array of shape {back.shape}, pushed {array.shape}")
        return seconds

    figures = {"push, first": push(), "pull, first": pull()}
    pushes, pulls = [], []
    for _ in range(rounds):
        pushes.append(push())
        pulls.append(pull())
    figures["push, later"] = statistics.median(pushes)
    figures["pull, later"] = statistics.median(pulls)
    return figures


def run_pxgrpc(array: np.ndarray, rounds: int) -> dict[str, float]:
    import pxgrpc

    with pxgrpc.Cluster(n=2) as rc:
        return measure(rc, array, rounds)


def run_ipyparallel(array: np.ndarray, rounds: int) -> dict[str, float]:
    import ipyparallel

    cluster = ipyparallel.Cluster(n=2, log_level=40)
    rc = cluster.start_and_connect_sync()
    try:
        rc.wait_for_engines(2, timeout=120)
        return measure(rc, array, rounds)
    finally:
        rc.close()
        cluster.stop_cluster_sync()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-ipp", action="store_true", help="pxgrpc alone")
    args = parser.parse_args()
    array = np.random.default_rng(1).random(args.mb * MB // 8)
    results = {"pxgrpc": run_pxgrpc(array, args.rounds)}
    if not args.no_ipp:
        results["ipyparallel"] = run_ipyparallel(array, args.rounds)
    print(f"{args.mb} MB array to one engine of a fresh 2-engine cluster, MB/s (more is better)")
    print(
        f"{'':<14}"
        + "".join(f"{name:>13}" for name in results)
        + ("      pxgrpc is" if len(results) > 1 else "")
    )
    for figure in results["pxgrpc"]:
        speeds = [args.mb / r[figure] for r in results.values()]
        line = f"{figure:<14}" + "".join(f"{s:>13,.0f}" for s in speeds)
        if len(speeds) > 1:
            line += f"  {speeds[0] / speeds[1]:>10.1f}x"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
