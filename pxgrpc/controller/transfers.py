"""Blob transfers both services offer: Upload (task inputs from clients, results from engines)
and the streaming of a stored blob to whoever downloads it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from pxgrpc import wire
from pxgrpc.controller.blobs import BlobError, BlobStore
from pxgrpc.controller.requests import Context
from pxgrpc.controller.state import ControllerState


class BlobTransfers:
    """Upload, shared by both services: bytes for tasks (clients) or results (engines)."""

    #: Uploads are tasks' inputs (clients), which this host's engines may map: make their
    #: shared copy before replying, so that the tasks that follow carry it.
    share_uploads = False

    def __init__(self, state: ControllerState) -> None:
        self.state = state

    async def Upload(self, requests: AsyncIterator[bytes], context: Context) -> wire.pb.UploadReply:
        try:
            reply = await self.state.blobs.receive(requests)
        except BlobError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise
        if self.share_uploads and any(e.on_controller_host for e in self.state.registry.live()):
            await self.state.blobs.share_now(reply.blob_id)
        return reply


async def stream_blob(
    blobs: BlobStore, blob_id: str, context: Context, host_key: str = ""
) -> AsyncIterator[bytes]:
    """Yield the chunks of a stored blob (or where to map it, for a reader on this host:
    `host_key`), or abort the call saying why it cannot be sent."""
    try:
        async for chunk in blobs.send(blob_id, host_key=host_key):
            yield chunk
    except BlobError as exc:
        code = grpc.StatusCode.NOT_FOUND if exc.not_found else grpc.StatusCode.FAILED_PRECONDITION
        await context.abort(code, str(exc))
    except TimeoutError:
        await context.abort(
            grpc.StatusCode.DEADLINE_EXCEEDED, f"blob {blob_id}: upload did not start in time"
        )
