"""`pxgrpc-engine`: run one engine, connected to a controller."""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import sys
import time

from pxgrpc import security
from pxgrpc.engine.engine import Engine

log = logging.getLogger("pxgrpc.engine")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pxgrpc-engine",
        description="Run a pxgrpc engine. It dials out to the controller (no listening port needed).",
    )
    parser.add_argument("--file", "--connection-file", dest="connection_file", type=pathlib.Path,
                        help="the controller's connection file (default: ~/.pxgrpc/controller.json)")
    parser.add_argument("--cluster-id", default="", help="use the connection file of this cluster id")
    parser.add_argument("--controller", default="", help="host:port of the controller (instead of a file)")
    parser.add_argument("--token", default=os.environ.get("PXGRPC_ENGINE_TOKEN", ""),
                        help="engine token, with --controller (default: $PXGRPC_ENGINE_TOKEN)")
    parser.add_argument("--tls-ca", type=pathlib.Path, help="CA certificate to verify the controller (with --controller)")
    parser.add_argument("--tls-server-name", default=None, help="expected name in the controller's certificate")
    parser.add_argument("--tls-cert", type=pathlib.Path, help="client certificate for mutual TLS")
    parser.add_argument("--tls-key", type=pathlib.Path, help="client key for mutual TLS")
    parser.add_argument("--wait", type=float, default=0.0,
                        help="wait up to this many seconds for the connection file to appear")
    parser.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING or ERROR")
    return parser


def connection_from_args(args: argparse.Namespace) -> security.ConnectionInfo:
    if args.controller:
        if not args.token:
            raise security.SecurityError("--controller needs --token (or $PXGRPC_ENGINE_TOKEN): the engine token")
        ca = args.tls_ca.read_text() if args.tls_ca else None
        return security.ConnectionInfo(url=args.controller, token="", engine_token=args.token, tls_ca=ca,
                                       tls_server_name=args.tls_server_name)
    path = args.connection_file or security.default_connection_file(args.cluster_id)
    deadline = time.monotonic() + args.wait
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    info = security.read_connection_file(path)
    if args.tls_server_name:
        info.tls_server_name = args.tls_server_name
    return info


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.__stderr__)
    if args.tls_cert and args.tls_key:
        os.environ["PXGRPC_TLS_CLIENT_CERT"] = str(args.tls_cert)
        os.environ["PXGRPC_TLS_CLIENT_KEY"] = str(args.tls_key)
    try:
        info = connection_from_args(args)
        Engine(info).serve()
    except (security.SecurityError, TimeoutError) as exc:
        print(f"pxgrpc-engine: {exc}", file=sys.__stderr__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
