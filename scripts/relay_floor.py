"""The floor under pxgrpc's round-trip latency: bare gRPC ping-pong, direct and through a relay.

    python scripts/relay_floor.py

A pxgrpc task crosses client -> controller -> engine -> controller -> client. This measures the
same path with no work at all: a grpc.aio bidirectional stream echoing raw bytes, first direct
(one hop each way), then through a relay process that forwards each message on a second stream
(two hops each way), as the controller does. Prints the median round trip of each.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import statistics
import sys
import time
from collections.abc import AsyncIterator

import grpc

METHOD = "/floor.Echo/Ping"


async def _serve(port: int, upstream: str | None, ready: multiprocessing.synchronize.Event) -> None:
    async def ping(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        if upstream is None:
            async for message in requests:
                yield message
            return
        channel = grpc.aio.insecure_channel(upstream)
        call = channel.stream_stream(METHOD)()

        async def forward() -> None:
            async for message in requests:
                await call.write(message)

        forwarding = asyncio.ensure_future(forward())
        async for message in call:
            yield message
        forwarding.cancel()

    server = grpc.aio.server()
    handler = grpc.stream_stream_rpc_method_handler(ping)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("floor.Echo", {"Ping": handler})])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    ready.set()
    await server.wait_for_termination()


def _server_process(port: int, upstream: str | None, ready: multiprocessing.synchronize.Event) -> None:
    asyncio.run(_serve(port, upstream, ready))


async def _round_trips(port: int, n: int = 3000) -> float:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    call = channel.stream_stream(METHOD)()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call.write(b"x" * 64)
        await call.read()
        times.append(time.perf_counter() - t0)
    call.cancel()
    await channel.close()
    return statistics.median(times[n // 10 :])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(pings: int = 3000) -> tuple[float, float]:
    """Median round trips (seconds) of `pings` ping-pongs: direct, and through a relay process."""
    ctx = multiprocessing.get_context("spawn")
    echo_ready, relay_ready = ctx.Event(), ctx.Event()
    echo_port, relay_port = _free_port(), _free_port()
    echo = ctx.Process(target=_server_process, args=(echo_port, None, echo_ready), daemon=True)
    relay = ctx.Process(
        target=_server_process, args=(relay_port, f"127.0.0.1:{echo_port}", relay_ready), daemon=True
    )
    echo.start()
    relay.start()
    try:
        echo_ready.wait(30)
        relay_ready.wait(30)
        return asyncio.run(_round_trips(echo_port, pings)), asyncio.run(_round_trips(relay_port, pings))
    finally:
        echo.terminate()
        relay.terminate()


def main() -> int:
    direct, relayed = measure()
    print(
        f"grpc.aio ping-pong, raw bytes, median round trip: direct {direct * 1e6:.0f} us, "
        f"through a relay process {relayed * 1e6:.0f} us"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
