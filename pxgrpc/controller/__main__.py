"""`pxgrpc-controller`: run a controller in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import pathlib
import signal
import sys

from pxgrpc.controller.server import Controller, ControllerConfig
from pxgrpc.memory import reuse_freed_memory
from pxgrpc.security.errors import SecurityError

log = logging.getLogger("pxgrpc.controller")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pxgrpc-controller",
        description="Run a pxgrpc controller: engines connect to it, clients drive them through it.",
    )
    parser.add_argument("--ip", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: any free port)")
    parser.add_argument(
        "--location", default="", help="host name or address others dial (written in the connection file)"
    )
    parser.add_argument(
        "--file",
        "--connection-file",
        dest="connection_file",
        type=pathlib.Path,
        help="where to write the connection file (default: ~/.pxgrpc/controller.json)",
    )
    parser.add_argument(
        "--cluster-id", default="", help="name of the cluster (connection file controller-ID.json)"
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("PXGRPC_TOKEN", ""),
        help="client token (default: $PXGRPC_TOKEN, else random at every start)",
    )
    parser.add_argument(
        "--engine-token",
        default=os.environ.get("PXGRPC_ENGINE_TOKEN", ""),
        help="engine token (default: $PXGRPC_ENGINE_TOKEN, else random at every start)",
    )
    parser.add_argument(
        "--tls",
        choices=["off", "auto"],
        default=None,
        help="'auto': make a CA and a server certificate and publish the CA in the connection file",
    )
    parser.add_argument(
        "--tls-san",
        dest="tls_san",
        action="append",
        default=[],
        metavar="HOST",
        help="with --tls auto: one more name or address the certificate is valid for (repeatable)",
    )
    parser.add_argument("--tls-cert", type=pathlib.Path, help="server certificate (PEM)")
    parser.add_argument("--tls-key", type=pathlib.Path, help="server private key (PEM)")
    parser.add_argument(
        "--tls-ca", type=pathlib.Path, help="CA certificate (PEM) clients verify the server with"
    )
    parser.add_argument(
        "--tls-client-auth",
        action="store_true",
        help="mutual TLS: engines and clients must present certificates signed by the CA "
        "(with --tls auto, the connection files carry such certificates)",
    )
    parser.add_argument("--insecure", action="store_true", help="allow a non-loopback address without TLS")
    parser.add_argument(
        "--heartbeat-interval", type=float, default=1.0, help="seconds between engine heartbeats"
    )
    parser.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=10.0,
        help="declare an engine dead after this many silent seconds",
    )
    parser.add_argument(
        "--prefetch",
        type=int,
        default=4,
        help="load-balanced tasks in flight per engine (more: faster tiny tasks, coarser balance)",
    )
    parser.add_argument(
        "--restore",
        action="store_true",
        help="come back as the controller of --file that died: same port, tokens, certificates and "
        "engine ids, so that its engines and clients reconnect and go on",
    )
    parser.add_argument(
        "--restore-grace",
        type=float,
        default=30.0,
        help="with --restore: seconds to wait for the engines known before before failing the "
        "tasks that no engine holds (default: 30)",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    return parser


def config_from_args(args: argparse.Namespace) -> ControllerConfig:
    """The ControllerConfig the command-line flags describe."""
    if args.tls == "auto" and (args.tls_cert or args.tls_key):
        raise SecurityError("--tls auto makes its own certificate: drop --tls-cert/--tls-key, or --tls auto")
    if args.tls == "off" and (args.tls_cert or args.tls_key):
        raise SecurityError("--tls off contradicts --tls-cert/--tls-key: drop one of them")
    tls = args.tls or ("files" if args.tls_cert or args.tls_key else "off")
    return ControllerConfig(
        ip=args.ip,
        port=args.port,
        location=args.location,
        connection_file=args.connection_file,
        cluster_id=args.cluster_id,
        token=args.token,
        engine_token=args.engine_token,
        tls=tls,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_ca=args.tls_ca,
        tls_client_auth=args.tls_client_auth,
        insecure=args.insecure,
        heartbeat_interval=args.heartbeat_interval,
        heartbeat_timeout=args.heartbeat_timeout,
        prefetch=args.prefetch,
        extra_hosts=args.tls_san,
        restore=args.restore,
        restore_grace=args.restore_grace,
    )


async def serve(config: ControllerConfig) -> None:
    controller = Controller(config)
    await controller.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, controller.state.stopping.set)
    await controller.wait_stopped()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    reuse_freed_memory("chunks")  # relayed chunks reuse mapped pages
    try:
        asyncio.run(serve(config_from_args(args)))
    except SecurityError as exc:
        print(f"pxgrpc-controller: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # grpc's "Failed to bind to address ..."
        if "bind" not in str(exc).lower():
            raise
        print(f"pxgrpc-controller: {exc}: is the address this host's and the port free?", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
