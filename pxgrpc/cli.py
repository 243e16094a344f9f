"""`pxgrpc`: manage clusters (`pxgrpc cluster start -n 4 [--engines ssh|mpi|slurm]`, `status`, `stop`)."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time

from pxgrpc.client.client import Client
from pxgrpc.client.errors import PxError
from pxgrpc.cluster import Cluster
from pxgrpc.clusterstate import launcher_states, stop_by_id
from pxgrpc.launchers import LAUNCHERS
from pxgrpc.security import certfiles
from pxgrpc.security.connection_file import default_connection_file
from pxgrpc.security.errors import SecurityError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pxgrpc", description="Interactive parallel Python over gRPC.")
    parser.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING or ERROR")
    sub = parser.add_subparsers(dest="command", required=True)
    cluster = sub.add_parser("cluster", help="start, stop or inspect a cluster")
    actions = cluster.add_subparsers(dest="action", required=True)

    start = actions.add_parser("start", help="start a controller and engines in the background")
    start.add_argument("-n", "--n", type=int, default=None, help="number of engines (default: one per CPU)")
    start.add_argument(
        "--cluster-id", default="", help="name of the cluster (default: the one Client() finds)"
    )
    start.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for the engines to register"
    )
    start.add_argument(
        "--controller-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for pxgrpc-controller (repeatable), e.g. --controller-arg=--tls=auto",
    )
    start.add_argument(
        "--restart-engines",
        action="store_true",
        help="replace an engine that dies (same id, fresh namespace); its task fails saying how it died",
    )
    start.add_argument(
        "--no-restart-controller",
        action="store_true",
        help="do not restart the controller when it dies (by default a supervisor brings it back "
        "with --restore: same port, tokens and engines)",
    )
    _add_launcher_options(start)

    stop = actions.add_parser("stop", help="stop a cluster started with `pxgrpc cluster start`")
    stop.add_argument("--cluster-id", default="")

    status = actions.add_parser("status", help="list the engines of a running cluster")
    status.add_argument("--cluster-id", default="")
    certfiles.add_commands(sub)
    return parser


def _add_launcher_options(start: argparse.ArgumentParser) -> None:
    start.add_argument(
        "--engines",
        default="local",
        choices=sorted(LAUNCHERS),
        help="how to start the engines: local processes (default), ssh to --hosts, mpiexec, or Slurm",
    )
    start.add_argument(
        "--hosts", default=None, help="ssh: hosts and engine counts, e.g. node1:4,node2:4 (mpi: --host)"
    )
    start.add_argument(
        "--remote-python", default=None, help="ssh: the Python on the hosts (default: this one's path)"
    )
    start.add_argument(
        "--controller-ip",
        default=None,
        help="address the controller listens on for remote engines, with TLS "
        "(default: this host's address towards the first host)",
    )
    start.add_argument(
        "--mpi-args", default=None, help='mpi: extra mpiexec arguments, one string (e.g. "--bind-to none")'
    )
    start.add_argument(
        "--slurm-args", default=None, help='slurm: extra sbatch/srun arguments (e.g. "--partition=debug")'
    )
    start.add_argument("--ssh-args", default=None, help='ssh: extra ssh arguments (e.g. "-F my_config")')


def _split(text: str | None) -> list[str] | None:
    return shlex.split(text) if text is not None else None


def cmd_start(args: argparse.Namespace) -> int:
    try:
        cluster = Cluster(
            n=args.n,
            cluster_id=args.cluster_id,
            controller_args=args.controller_arg,
            log_level=args.log_level,
            shutdown_atexit=False,  # the point of `cluster start` is a cluster that outlives it
            engines=args.engines,
            hosts=args.hosts,
            remote_python=args.remote_python,
            controller_ip=args.controller_ip,
            mpi_args=_split(args.mpi_args),
            slurm_args=_split(args.slurm_args),
            ssh_args=_split(args.ssh_args),
            timeout=args.timeout,
            restart_engines=args.restart_engines,
            restart_controller=not args.no_restart_controller,
        )
    except PxError as exc:
        print(f"pxgrpc: {exc}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    where = "" if args.engines == "local" else f" ({args.engines})"
    print(f"starting a controller and {cluster.n} engines{where} ...", flush=True)
    try:
        cluster.start_controller_sync()
        cluster.start_engines_sync()
        cluster.wait_for_connection_file(args.timeout)
        with Client(cluster.connection_file) as rc:
            cluster.wait_for_engines(
                rc,
                max(0.0, args.timeout - (time.monotonic() - t0)),
                lambda count, n: print(f"  {count}/{n} engines registered", flush=True),
            )
    except (PxError, SecurityError) as exc:
        print(f"pxgrpc: {exc}", file=sys.stderr)
        cluster.stop_cluster_sync()
        return 1
    print(
        f"cluster ready in {time.monotonic() - t0:.2f} s: {cluster.n} engines; "
        f"connection file {cluster.connection_file}"
    )
    print(
        "connect with:  import pxgrpc as ipp; rc = ipp.Client()"
        + (f"  (cluster_id={args.cluster_id!r})" if args.cluster_id else "")
    )
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    if stop_by_id(args.cluster_id):
        print("cluster stopped")
        return 0
    print(f"pxgrpc: no running cluster with id {args.cluster_id!r}", file=sys.stderr)
    return 1


def cmd_status(args: argparse.Namespace) -> int:
    path = default_connection_file(args.cluster_id)
    try:
        with Client(path, timeout=5) as rc:
            engines = rc.engines
            print(
                f"controller {rc.connection_info.url} (pid {rc.connection_info.controller_pid}), "
                f"{len(engines)} engines"
            )
            for launched in launcher_states(args.cluster_id):
                print(f"engines started by {launched.describe()}")
            if engines:
                print(f"{'id':>4}  {'host':<24} {'pid':>8}  {'state':<6} {'queue':>5} {'done':>6}")
            for e in engines:
                print(
                    f"{e['id']:>4}  {e['hostname']:<24} {e['pid']:>8}  {e['state']:<6} {e['queue']:>5} "
                    f"{e['completed']:>6}"
                )
    except (PxError, SecurityError) as exc:
        print(f"pxgrpc: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_tls(args: argparse.Namespace) -> int:
    """`pxgrpc tls ca|server|client`: PEM files for --tls-cert/--tls-key/--tls-ca and mutual TLS."""
    try:
        cert = certfiles.run_command(args)
    except SecurityError as exc:
        print(f"pxgrpc: {exc}", file=sys.stderr)
        return 1
    key = cert.with_name(f"{cert.stem}-key.pem")
    print(f"wrote {cert} and {key} (private, mode 0600)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper())
    if args.command == "tls":
        return cmd_tls(args)
    handlers = {"start": cmd_start, "stop": cmd_stop, "status": cmd_status}
    return handlers[args.action](args)


if __name__ == "__main__":
    sys.exit(main())
