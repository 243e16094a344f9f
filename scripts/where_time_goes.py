"""Where the time of a round trip, a scatter and a gather goes, next to the floors under them.

    python scripts/where_time_goes.py            # phases and floors (about 30 s)
    python scripts/where_time_goes.py --py-spy   # also sample the controller and an engine
    python scripts/where_time_goes.py --quick    # fewer repetitions (a smoke test)

The speed goals that `scripts/bench.py` reports as not met are bounded by costs pxgrpc does not
control. This prints the evidence:

- floors: a bare gRPC ping-pong direct and through one relay process (what any design that sends
  control traffic through the controller pays), and what CPython needs to pickle, unpickle and
  create 500,000 ints (the work a scatter or gather of a 1,000,000-int list cannot skip);
- client-side costs per call: encoding `apply`'s function with cloudpickle against the client's
  cache of functions whose bytes cannot change (`pxgrpc.client.funcache`), and the copy that
  joining two 40 MB halves with `np.concatenate` would cost (a gather of arrays downloads each
  part into its slice of one array instead: `pxgrpc.client.assemble`);
- phases: the median time, from the call, at which each process reaches each step of
  `rc[0].apply_sync(noop)` (relayed by the controller, with `PXGRPC_DIRECT_TASKS=off`; sent
  straight to the engine on its gRPC `Tasks` stream, as across hosts; and on the engine's task
  lane, the default on one host), of `scatter` and of `gather` (a 1,000,000-int list, and an 80 MB
  float64 array) on a 2-engine cluster. The steps are stamped by the processes themselves (the
  controller's `submitted`, the engine's `started` and `completed`), all on this host's clock;
- with --py-spy (py-spy on PATH): the functions the controller and an engine spend their samples
  in during a stream of round trips, and how much of the time they sit idle in epoll.
"""

from __future__ import annotations

import argparse
import collections
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cloudpickle
import numpy as np
import relay_floor  # (the sibling script)

import pxgrpc
from pxgrpc import wire
from pxgrpc.client.encoding import encode_action
from pxgrpc.client.tasks import Apply

N = 500_000
MB = 1 << 20


def noop() -> None:
    pass


def median_ms(f: Callable[[], Any], reps: int = 9) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        result = f()
        times.append(time.perf_counter() - t0)
        del result
    return statistics.median(times) * 1e3


def floors(pings: int) -> None:
    print("floors")
    direct, relayed = relay_floor.measure(pings)
    print(f"  grpc.aio ping-pong, direct                      {direct * 1e3:7.3f} ms")
    print(f"  grpc.aio ping-pong, through one relay process   {relayed * 1e3:7.3f} ms")
    ints = list(range(N, 2 * N))
    data = pickle.dumps(ints, protocol=5)
    print(f"  create {N:,} ints (list(range(...)))       {median_ms(lambda: list(range(N, 2 * N))):7.2f} ms")
    print(
        f"  pickle.dumps of them                            {median_ms(lambda: pickle.dumps(ints)):7.2f} ms"
    )
    print(
        f"  pickle.loads of them                            {median_ms(lambda: pickle.loads(data)):7.2f} ms"
    )
    print(f"  join two such lists into one                    {median_ms(lambda: [*ints, *ints]):7.2f} ms")
    half = np.random.default_rng(0).random(40 * MB // 8)
    concat = median_ms(lambda: np.concatenate([half, half]))
    print(f"  np.concatenate of two 40 MB float64 halves      {concat:7.2f} ms  (gather of arrays skips it)")
    print("client-side costs per call")
    once = median_ms(lambda: cloudpickle.dumps(noop, protocol=5), 201)
    cached = median_ms(lambda: encode_action(Apply(noop), wire.pb.Action()), 201)
    print(f"  cloudpickle.dumps(noop)                         {once * 1e3:7.1f} us")
    print(f"  encode_action(Apply(noop)), function cached     {cached * 1e3:7.1f} us")


def phases(title: str, rows: list[dict[str, float]]) -> None:
    print(title)
    for step in rows[0]:
        print(f"  {step:<46}{statistics.median(row[step] for row in rows if step in row) * 1e3:8.3f} ms")


def stamps(ar: Any, t0: float, sent: str = "controller has the task") -> dict[str, float]:
    """When each engine's task reached the controller (a direct task: left the client),
    started and ended (seconds from t0)."""
    outcomes = sorted(ar._events.outcomes, key=lambda o: o.started)
    out = {}
    for k, o in enumerate(outcomes):
        who = "engine" if len(outcomes) == 1 else f"engine {k + 1} of {len(outcomes)}"
        if o.submitted:  # (an engine does not stamp the tasks clients send it directly)
            out[f"{sent} for {who}"] = o.submitted - t0
        out[f"{who} starts it"] = o.started - t0
        out[f"{who} is done"] = o.completed - t0
        out[f"client has {who}'s result event"] = o.received - t0
    return out


def apply_phases(rc: Any, calls: int, path: str) -> None:
    e0 = rc[0]
    direct = not path.startswith("relayed")
    sent = "client sends the task straight" if direct else "controller has the task"
    rows = []
    warmup = calls // 10
    for i in range(calls + warmup):
        t0 = time.time()
        ar = e0.apply_async(noop)
        queued = time.time() - t0
        ar.get()
        returned = time.time() - t0
        if i >= warmup:
            rows.append(
                {
                    "client has encoded and queued it": queued,
                    **stamps(ar, t0, sent),
                    "get() returns": returned,
                }
            )
    phases(f"rc[0].apply_sync(noop), {path}, median time from the call", rows)


def direct_apply_phases(cluster: Any, calls: int, lane: bool) -> None:
    """The same round trip on a direct path: a second client with direct tasks on, on the
    engine's task lane (`lane`, the default on one host) or on its gRPC `Tasks` stream."""
    os.environ["PXGRPC_DIRECT_TASKS"] = "on"
    os.environ["PXGRPC_TASK_LANE"] = "on" if lane else "off"
    try:
        rc = pxgrpc.Client(cluster.connection_file)
    finally:
        os.environ.pop("PXGRPC_DIRECT_TASKS")
        os.environ.pop("PXGRPC_TASK_LANE")
    try:
        deadline = time.monotonic() + 10
        while rc._transport._links.usable(0) is None and time.monotonic() < deadline:
            rc[0].apply_sync(noop)  # (the first tasks are relayed while the link connects)
        path = (
            "on the engine's task lane (the default on one host)"
            if lane
            else "direct on EngineData.Tasks over gRPC (PXGRPC_TASK_LANE=off; across hosts)"
        )
        apply_phases(rc, calls, path)
    finally:
        rc.close()


def scatter_gather_phases(rc: Any, reps: int = 15) -> None:
    dv = rc[:]
    ints = list(range(2 * N))
    array = np.random.default_rng(1).random(80 * MB // 8)
    for data, name in ((ints, f"a {2 * N:,}-int list"), (array, "an 80 MB float64 array")):
        dv.scatter("x", data, block=True)
        _scatter_gather(dv, data, name, reps)
    dv.execute("del x", block=True)


def _scatter_gather(dv: Any, data: Any, name: str, reps: int) -> None:
    for what in ("scatter", "gather"):
        rows = []
        for _ in range(reps):
            t0 = time.time()
            ar = dv.scatter("x", data) if what == "scatter" else dv.gather("x")
            queued = time.time() - t0
            ar.get()
            rows.append(
                {
                    "the call returns (parts encoded, queued)": queued,
                    **stamps(ar, t0),
                    "client has every result (decoded, joined)": time.time() - t0,
                }
            )
            del ar
        phases(f"{what} of {name} over 2 engines, median time from the call", rows)


def py_spy_profile(rc: Any, cluster: Any, seconds: int = 4, rate: int = 500) -> None:
    """Sample the controller and engine 0 (py-spy) while a stream of round trips runs: how busy
    each thread is (on CPU), and in which Python frames (gRPC's C core shows as its thread)."""
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        print("py-spy is not on PATH: pip install py-spy")
        return
    pids = {"controller": cluster.controller.pid, "engine": cluster.engines[0].pid}
    with tempfile.TemporaryDirectory() as tmp:
        recorders = {
            name: subprocess.Popen(
                [
                    py_spy,
                    "record",
                    "-p",
                    str(pid),
                    "-d",
                    str(seconds),
                    "-r",
                    str(rate),
                    "--threads",
                    "-f",
                    "raw",
                    "-o",
                    f"{tmp}/{name}.txt",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for name, pid in pids.items()
        }
        e0 = rc[0]
        calls = 0
        deadline = time.monotonic() + seconds + 0.5
        while time.monotonic() < deadline:
            e0.apply_sync(noop)
            calls += 1
        print(f"py-spy during {calls} apply_sync round trips ({seconds} s): share of wall time on CPU")
        for name, recorder in recorders.items():
            recorder.wait(60)
            threads: collections.Counter[str] = collections.Counter()
            frames: collections.Counter[str] = collections.Counter()
            with open(f"{tmp}/{name}.txt") as f:
                for line in f:
                    stack, _, count = line.rstrip().rpartition(" ")
                    parts = stack.split(";")
                    threads[parts[0].split(": ", 1)[-1]] += int(count)
                    frames[parts[-1]] += int(count)
            possible = seconds * rate
            busy = ", ".join(f"{thread} {100 * n / possible:.0f}%" for thread, n in threads.most_common())
            print(f"  {name}: {busy}")
            for frame, n in frames.most_common(6):
                print(f"    {100 * n / possible:5.1f}%  {frame[:100]}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--py-spy", action="store_true", help="also sample the controller and an engine")
    parser.add_argument("--quick", action="store_true", help="a short run (fewer repetitions)")
    args = parser.parse_args()
    floors(300 if args.quick else 2000)
    cluster = pxgrpc.Cluster(n=2)
    os.environ["PXGRPC_DIRECT_TASKS"] = "off"  # this client relays; direct_apply_phases' does not
    try:
        rc = cluster.start_and_connect_sync()
    finally:
        os.environ.pop("PXGRPC_DIRECT_TASKS")
    try:
        apply_phases(rc, 200 if args.quick else 2000, "relayed by the controller (PXGRPC_DIRECT_TASKS=off)")
        for lane in (False, True):
            direct_apply_phases(cluster, 200 if args.quick else 2000, lane)
        scatter_gather_phases(rc, 3 if args.quick else 15)
        if args.py_spy:
            py_spy_profile(rc, cluster)
    finally:
        cluster.stop_cluster_sync()
    return 0


if __name__ == "__main__":
    sys.exit(main())
