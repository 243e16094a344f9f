"""Seconds from `Cluster(...)` to N registered engines, per launcher (a benchmark, not a test).

    python scripts/bench_launchers.py -n 4 --repeat 5
    python scripts/bench_launchers.py --ssh-hosts node1:2,node2:2 --ssh-args "-F ~/.ssh/config"
    sudo python scripts/bench_launchers.py --test-hosts     # throwaway ssh hosts and Slurm, as the tests

Each run starts a controller and the engines, waits until all have registered, and stops them;
the table gives the median, fastest and slowest run. `local` and `mpi` run when their tools exist;
`ssh` needs --ssh-hosts (or --test-hosts); `slurm` needs a Slurm that answers `sinfo` (or
--test-hosts, which starts a single-node Slurm and network-namespace hosts with sshd, as
tests/test_launcher_slurm.py and tests/test_launcher_ssh.py do; root only).
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pxgrpc as ipp


def time_start(n: int, engines: str, **options: Any) -> float:
    """Seconds until `n` engines of a fresh cluster have registered."""
    started = time.perf_counter()
    cluster = ipp.Cluster(n=n if engines != "ssh" else None, engines=engines, timeout=120, **options)
    try:
        cluster.start_and_connect_sync()
        return time.perf_counter() - started
    finally:
        cluster.stop_cluster_sync()


@contextlib.contextmanager
def throwaway_hosts(with_ssh: bool, with_slurm: bool) -> Iterator[dict[str, dict[str, Any]]]:
    """The tests' throwaway ssh hosts and single-node Slurm, and the Cluster options for them."""
    repo = Path(__file__).resolve().parent.parent
    sys.path[:0] = [str(repo / "tests"), str(repo)]  # the tests import helpers both ways
    import test_launcher_slurm
    import test_launcher_ssh

    options: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        if with_ssh and test_launcher_ssh.unavailable() is None:
            lan = test_launcher_ssh.SshLan()
            stack.callback(lan.net.teardown)
            lan.build()
            hosts = dict.fromkeys(test_launcher_ssh.HOSTS, 0)
            options["ssh"] = {
                "hosts": hosts,
                "ssh_args": ["-F", str(lan.config)],
                "remote_python": str(lan.python),
            }
        if with_slurm and test_launcher_slurm.unavailable() is None:
            stack.enter_context(test_launcher_slurm.single_node_slurm())
            options["slurm"] = {}
        yield options


def split_evenly(hosts: dict[str, int], n: int) -> dict[str, int]:
    names = list(hosts)
    return {h: n // len(names) + (i < n % len(names)) for i, h in enumerate(names)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=4, help="engines per cluster")
    parser.add_argument("--repeat", type=int, default=5, help="runs per launcher")
    parser.add_argument("--launchers", default="local,mpi,ssh,slurm", help="which launchers to time")
    parser.add_argument("--ssh-hosts", default="", help="hosts for the ssh launcher, e.g. node1:2,node2:2")
    parser.add_argument("--ssh-args", default="", help="extra ssh arguments, one string")
    parser.add_argument("--remote-python", default=None, help="the Python on the ssh hosts")
    parser.add_argument("--test-hosts", action="store_true", help="build the tests' ssh hosts and Slurm")
    args = parser.parse_args()
    wanted = args.launchers.split(",")
    with contextlib.ExitStack() as stack:
        options: dict[str, dict[str, Any]] = {"local": {}}
        if shutil.which("mpiexec"):
            options["mpi"] = {}
        if args.ssh_hosts:
            options["ssh"] = {
                "hosts": args.ssh_hosts,
                "ssh_args": shlex.split(args.ssh_args),
                "remote_python": args.remote_python,
            }
        if (
            shutil.which("sinfo")
            and subprocess.run(["sinfo"], capture_output=True, check=False).returncode == 0
        ):
            options["slurm"] = {}
        if args.test_hosts:
            options.update(stack.enter_context(throwaway_hosts("ssh" not in options, "slurm" not in options)))
        header = f"{'launcher':<8} {'engines':>7} {'median s':>9} {'min s':>7} {'max s':>7}"
        print(f"{header}   (runs: {args.repeat})")
        for name in wanted:
            if name not in options:
                print(f"{name:<8} {'-':>7}   skipped: not available here")
                continue
            opts = dict(options[name])
            if name == "ssh" and isinstance(opts["hosts"], dict) and not any(opts["hosts"].values()):
                opts["hosts"] = split_evenly(opts["hosts"], args.n)
            times = [time_start(args.n, name, **opts) for _ in range(args.repeat)]
            median, low, high = statistics.median(times), min(times), max(times)
            print(f"{name:<8} {args.n:>7} {median:>9.2f} {low:>7.2f} {high:>7.2f}", flush=True)


if __name__ == "__main__":
    main()
