"""Getting back to a lost controller: which ends of a session stream are worth a reconnect, and
the redialing itself (capped exponential backoff, bounded in time).

A controller restarted with `--restore` comes back on the same address with the same tokens,
so the client's channel can simply dial again; the `Transport` then opens a session stream that
resumes its session (`SessionRequest.session_id` and `resume_task_ids`).
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc

from pxgrpc import wire
from pxgrpc.client.errors import PxConnectionError
from pxgrpc.client.rpcerrors import rpc_error

if TYPE_CHECKING:
    from pxgrpc.client.calls import ControllerCalls

log = logging.getLogger(__name__)

#: Stream errors that mean the controller (or the way to it) went away: worth reconnecting.
LOST = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.DEADLINE_EXCEEDED,
)
#: The longest pause between two attempts.
BACKOFF_CAP = 2.0


class StreamEnd:
    """How a session stream ended: the error pending tasks get, and whether to reconnect."""

    def __init__(self, error: PxConnectionError, reconnect: bool) -> None:
        self.error = error
        self.reconnect = reconnect


async def redial(
    calls: ControllerCalls,
    url: str,
    timeout: float,
    connection_file: pathlib.Path | None,
    lost: PxConnectionError,
    closing: Callable[[], bool],
) -> wire.pb.ListEnginesReply | PxConnectionError | None:
    """Call the controller at `url` until it answers (its engine list) or `timeout` seconds
    pass (the error pending tasks get then). Gives up at once when its connection file is gone
    (it stopped cleanly) or it refuses us; None when the client closes meanwhile."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    log.warning("lost the controller at %s (%s): reconnecting for up to %.0f s", url, lost, timeout)
    delay = 0.1
    while not closing():
        if connection_file is not None and not connection_file.exists():
            gone = f"its connection file {connection_file} is gone"
            return PxConnectionError(f"the controller at {url} stopped ({gone})")
        try:
            reply: wire.pb.ListEnginesReply = await calls.list_engines(
                wire.pb.ListEnginesRequest(), calls.metadata, BACKOFF_CAP
            )
            log.warning("reconnected to the controller at %s", url)
            return reply
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return rpc_error(exc, url)
        if loop.time() + delay > deadline:
            return PxConnectionError(
                f"lost the controller at {url} and could not reconnect within {timeout:.0f} s ({lost})"
            )
        await asyncio.sleep(delay)
        delay = min(2 * delay, BACKOFF_CAP)
    return None
