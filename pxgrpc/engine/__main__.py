"""`pxgrpc-engine`: run one engine, connected to a controller."""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import pathlib
import sys
import time

from pxgrpc import diagnose, identity
from pxgrpc.engine import supervisor
from pxgrpc.engine.engine import Engine
from pxgrpc.security import certfiles
from pxgrpc.security.connection_file import (
    ConnectionInfo,
    default_connection_file,
    engine_connection_file,
    read_connection_file,
)
from pxgrpc.security.errors import SecurityError

log = logging.getLogger("pxgrpc.engine")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pxgrpc-engine",
        description="Run a pxgrpc engine. It dials out to the controller (no listening port needed). "
        "On another host, copy the controller's controller-engine.json there and pass it with --file, "
        "or give --controller HOST:PORT --token T [--tls-ca CA.pem].",
    )
    parser.add_argument(
        "--file",
        "--connection-file",
        dest="connection_file",
        type=pathlib.Path,
        help="the controller's connection file (default: ~/.pxgrpc/controller.json, "
        "else ~/.pxgrpc/controller-engine.json)",
    )
    parser.add_argument("--cluster-id", default="", help="use the connection file of this cluster id")
    parser.add_argument("--controller", default="", help="host:port of the controller (instead of a file)")
    parser.add_argument(
        "--token",
        default=os.environ.get("PXGRPC_ENGINE_TOKEN", ""),
        help="engine token, with --controller (default: $PXGRPC_ENGINE_TOKEN)",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="with --controller and no --tls-ca: use TLS, trusting the system's CAs",
    )
    parser.add_argument(
        "--tls-ca", type=pathlib.Path, help="CA certificate (PEM) to verify the controller with"
    )
    parser.add_argument(
        "--tls-server-name", default=None, help="expected name in the controller's certificate"
    )
    parser.add_argument("--tls-cert", type=pathlib.Path, help="client certificate (PEM) for mutual TLS")
    parser.add_argument("--tls-key", type=pathlib.Path, help="its private key (PEM)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="give up when the controller cannot be reached within this many seconds",
    )
    parser.add_argument(
        "--reconnect-timeout",
        type=float,
        default=300.0,
        help="once registered, keep trying this many seconds to reach a lost controller (its "
        "namespace kept) before exiting (default: 300)",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        help="wait up to this many seconds for the connection file to appear",
    )
    parser.add_argument(
        "--data-host",
        default=os.environ.get("PXGRPC_DATA_HOST", ""),
        help="TLS clusters: the address (or name) this engine's data endpoint listens on and "
        "clients dial (default: $PXGRPC_DATA_HOST, else this host's address towards the controller)",
    )
    parser.add_argument(
        "--mpi",
        action="store_true",
        help="started by mpiexec: register with engine id = MPI rank (from mpi4py, else "
        "$OMPI_COMM_WORLD_RANK, $PMIX_RANK or $PMI_RANK)",
    )
    parser.add_argument(
        "--engine-id",
        type=int,
        default=None,
        help="register under this engine id (it must be free); default: the next free one",
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="run the engine under a supervisor that replaces it, under the same id and with a "
        "fresh namespace, when it dies (and tells the controller how it died)",
    )
    parser.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING or ERROR")
    return parser


def connection_from_args(args: argparse.Namespace) -> ConnectionInfo:
    """The controller to dial and the credentials to use, from a connection file or flags."""
    if args.controller:
        if not args.token:
            raise SecurityError("--controller needs --token (or $PXGRPC_ENGINE_TOKEN): the engine token")
        info = ConnectionInfo(url=args.controller, token="", engine_token=args.token, tls=args.tls)
    else:
        info = read_connection_file(_connection_file(args))
        if not info.engine_token:
            raise SecurityError("the connection file holds no engine token; use the controller's own file")
    return certfiles.override(
        info,
        cert=args.tls_cert,
        key=args.tls_key,
        ca=args.tls_ca,
        server_name=args.tls_server_name,
        names=("--tls-cert", "--tls-key", "--tls-ca"),
    )


def _connection_file(args: argparse.Namespace) -> pathlib.Path:
    if args.connection_file:
        path: pathlib.Path = args.connection_file
    else:
        path = default_connection_file(args.cluster_id)
        engine_only = engine_connection_file(path)
        if not path.exists() and engine_only.exists():
            path = engine_only
    deadline = time.monotonic() + args.wait
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return path


def _mpi_rank() -> int:
    rank = identity.mpi_rank()
    if rank is None:
        names = ", ".join(f"${name}" for name in identity.RANK_VARIABLES)
        raise SecurityError(
            f"--mpi: no MPI rank found (mpi4py is not installed and none of {names} is set); "
            "start the engines with mpiexec, or drop --mpi"
        )
    return rank


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.__stderr__,
    )
    try:
        info = connection_from_args(args)
        if args.restart:
            return supervisor.supervise(sys.argv[1:] if argv is None else argv, info)
        engine = Engine(info)
        if args.mpi:
            engine.conn.requested_id = _mpi_rank()
        if args.engine_id is not None:
            engine.conn.requested_id = args.engine_id
        engine.conn.supervised = args.supervised
        if args.supervised:  # the crashing thread's stack, short enough for the exit report
            faulthandler.enable(file=2, all_threads=False)
        engine.conn.connect_timeout = args.timeout
        engine.conn.reconnect_timeout = args.reconnect_timeout
        engine.conn.data_host = args.data_host
        engine.serve(register_timeout=args.timeout + 15)
    except (SecurityError, diagnose.ConnectFailure, TimeoutError) as exc:
        print(f"pxgrpc-engine: {exc}", file=sys.__stderr__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
