"""`pxgrpc`: manage local clusters (`pxgrpc cluster start -n 4`, `status`, `stop`)."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from pxgrpc.client.client import Client
from pxgrpc.client.errors import PxError
from pxgrpc.cluster import Cluster, stop_by_id
from pxgrpc.security import certfiles
from pxgrpc.security.connection_file import default_connection_file
from pxgrpc.security.errors import SecurityError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pxgrpc", description="Interactive parallel Python over gRPC.")
    parser.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING or ERROR")
    sub = parser.add_subparsers(dest="command", required=True)
    cluster = sub.add_parser("cluster", help="start, stop or inspect a local cluster")
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

    stop = actions.add_parser("stop", help="stop a cluster started with `pxgrpc cluster start`")
    stop.add_argument("--cluster-id", default="")

    status = actions.add_parser("status", help="list the engines of a running cluster")
    status.add_argument("--cluster-id", default="")
    certfiles.add_commands(sub)
    return parser


def cmd_start(args: argparse.Namespace) -> int:
    cluster = Cluster(
        n=args.n,
        cluster_id=args.cluster_id,
        controller_args=args.controller_arg,
        log_level=args.log_level,
        shutdown_atexit=False,  # the point of `cluster start` is a cluster that outlives it
    )
    t0 = time.monotonic()
    print(f"starting a controller and {cluster.n} engines ...", flush=True)
    try:
        cluster.start_cluster_sync()
        cluster.wait_for_connection_file(args.timeout)
        with Client(cluster.connection_file) as rc:
            seen = -1
            while (count := len(rc.ids)) < cluster.n:
                if count != seen:
                    print(f"  {count}/{cluster.n} engines registered", flush=True)
                    seen = count
                if time.monotonic() - t0 > args.timeout:
                    raise PxError(
                        f"only {count} of {cluster.n} engines registered in {args.timeout:.0f} s "
                        f"(logs: {cluster.log_dir})"
                    )
                if any(p.poll() is not None for p in cluster.engines):
                    raise PxError(f"an engine exited during start-up (logs: {cluster.log_dir})")
                time.sleep(0.02)
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
