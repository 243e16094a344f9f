"""The typed calls of the Controller service a client makes (`ControllerCalls`), on one channel,
and their replies made plain Python for the client's API."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, Generic, TypeVar

import grpc

from pxgrpc import blobstream, wire

Req = TypeVar("Req")
Rep = TypeVar("Rep")


class Unary(Generic[Req, Rep]):
    """One unary call of the Controller service, typed by its request and reply."""

    def __init__(self, channel: grpc.aio.Channel, name: str, request: type[Req], reply: type[Rep]) -> None:
        self._call = channel.unary_unary(
            f"/{wire.CONTROLLER_SERVICE}/{name}",
            request_serializer=request.SerializeToString,  # type: ignore[attr-defined]
            response_deserializer=reply.FromString,  # type: ignore[attr-defined]
        )

    def __call__(
        self,
        request: Req,
        metadata: tuple[tuple[str, str], ...],
        timeout: float,
        wait_for_ready: bool = False,
    ) -> Awaitable[Rep]:
        return self._call(  # type: ignore[no-any-return]
            request, metadata=metadata, timeout=timeout, wait_for_ready=wait_for_ready
        )


class ControllerCalls:
    """The calls of the Controller service this client makes (blobs travel as raw bytes)."""

    def __init__(self, channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]) -> None:
        pb = wire.pb
        self.metadata = metadata
        self.list_engines = Unary(channel, "ListEngines", pb.ListEnginesRequest, pb.ListEnginesReply)
        self.abort = Unary(channel, "Abort", pb.AbortRequest, pb.AbortReply)
        self.interrupt = Unary(channel, "Interrupt", pb.InterruptRequest, pb.InterruptReply)
        self.queue_status = Unary(channel, "QueueStatus", pb.QueueStatusRequest, pb.QueueStatusReply)
        self.shutdown = Unary(channel, "Shutdown", pb.ShutdownRequest, pb.ShutdownReply)
        svc = f"/{wire.CONTROLLER_SERVICE}/"
        self._session_rpc = channel.stream_stream(
            svc + "Session",
            request_serializer=pb.SessionRequest.SerializeToString,
            response_deserializer=pb.SessionEvent.FromString,
        )
        self._upload_rpc = channel.stream_unary(
            svc + "Upload", request_serializer=None, response_deserializer=pb.UploadReply.FromString
        )
        self._download_rpc = channel.unary_stream(
            svc + "Download",
            request_serializer=pb.DownloadRequest.SerializeToString,
            response_deserializer=None,
        )

    def session(self, requests: AsyncIterator[wire.pb.SessionRequest]) -> grpc.aio.StreamStreamCall[Any, Any]:
        """Open the session stream: submits go up, engine lists and task events come down."""
        return self._session_rpc(requests, metadata=self.metadata)

    async def upload(self, blob: blobstream.OutgoingBlob) -> None:
        """Upload a blob to the controller, which relays it to the engines (raises grpc.RpcError)."""
        await self._upload_rpc(blob.raw_messages(), metadata=self.metadata)

    async def download(self, blob_id: str, into: memoryview | None = None) -> blobstream.IncomingBlob:
        """Fetch a result blob the controller relays, into `into` when given and of its size
        (raises grpc.RpcError or wire.DecodingError)."""
        call = self._download_rpc(wire.pb.DownloadRequest(blob_id=blob_id), metadata=self.metadata)
        return await blobstream.receive(call, blob_id, into=into)


_STATES = {wire.ENGINE_IDLE: "idle", wire.ENGINE_BUSY: "busy", wire.ENGINE_DEAD: "dead"}


def as_targets(engine_ids: Sequence[int]) -> wire.pb.Targets:
    """Engine ids as a request's `targets`."""
    return wire.pb.Targets(engine_ids=list(engine_ids))


def engine_dicts(reply: wire.pb.ListEnginesReply) -> list[dict[str, Any]]:
    """The engines with their host, pid, state and counts, as `Client.list_engines` gives them."""
    return [
        {
            "id": e.engine_id,
            "hostname": e.hostname,
            "pid": e.pid,
            "state": _STATES.get(e.state, "?"),
            "queue": e.queue,
            "completed": e.completed,
            "registered": e.registered,
            "python": e.python_version,
            "protocol": e.protocol_version,
            "cloudpickle": e.cloudpickle_version,
            "data_url": e.data_url,
            "host_key": e.host_key,
        }
        for e in reply.engines
    ]


def queue_status_dict(reply: wire.pb.QueueStatusReply, verbose: bool) -> dict[int | str, Any]:
    """`{engine_id: {'queue': n, 'completed': n, 'tasks': n}, 'unassigned': n}` (with `verbose`,
    each queue as its task ids)."""
    status: dict[int | str, Any] = {}
    for e in reply.engines:
        queue = list(e.queued_task_ids) if verbose else e.queue
        status[e.engine_id] = {"queue": queue, "completed": e.completed, "tasks": e.tasks}
    status["unassigned"] = reply.unassigned
    return status
