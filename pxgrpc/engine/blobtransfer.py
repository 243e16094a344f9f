"""The engine's blob transfers: what a task needs, from the data endpoint or the controller;
result blobs up to the controller."""

from __future__ import annotations

import collections
import concurrent.futures
import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import grpc

from pxgrpc import blobstream, sharedmem, wire
from pxgrpc.engine.datapath import DataEndpoint

log = logging.getLogger(__name__)

#: Where this engine's task blobs came from: "task" (a shared copy named by the task itself),
#: "controller" (downloaded from it, bytes or shared), "client" (uploaded to the data endpoint).
sources: collections.Counter[str] = collections.Counter()


class BlobLink(Protocol):
    """Where blobs come from: the channel to the controller, and the data endpoint if any."""

    channel: grpc.aio.Channel
    metadata: tuple[tuple[str, str], ...]
    data: DataEndpoint | None


async def fetch(
    link: BlobLink,
    blob_ids: set[str],
    ready: concurrent.futures.Future[wire.BlobMap],
    shared: Iterable[wire.pb.BlobHeader] = (),
) -> None:
    """Get the blobs a task needs into `ready` (or the reason it cannot have them). `shared`:
    those the controller holds in shared memory on this host (`Task.shared_blobs`): mapped
    here without asking, when they can be."""
    headers = list(shared)
    try:
        blobs: wire.BlobMap = {}
        for blob_id in blob_ids:
            mapped = map_named(headers, blob_id)
            blobs[blob_id] = mapped if mapped is not None else await claim(link, blob_id)
    except Exception as exc:  # noqa: BLE001 - the task fails with the reason, the engine lives on
        ready.set_exception(exc)
    else:
        ready.set_result(blobs)


def map_named(shared: Iterable[wire.pb.BlobHeader], blob_id: str) -> blobstream.IncomingBlob | None:
    """A blob mapped from its shared copy among `shared` (a task's `shared_blobs`), if that names
    one that can be mapped here; else None (the caller fetches it)."""
    for header in shared:
        if header.blob_id == blob_id:
            try:
                blob = sharedmem.map_blob(blob_id, header)
            except sharedmem.SharedBlobUnusable as exc:
                log.info("%s: fetching it instead", exc)
                return None
            sources["task"] += 1
            return blob
    return None


class OnDemand(dict[str, blobstream.IncomingBlob]):
    """The blobs of the running task when they were not fetched ahead (a lane's, which the main
    thread reads when idle and runs at once): each is got (`get_blob(task, blob_id)`) the first
    time a value that references it is decoded. One per engine, for one task at a time: `task`
    is set before the task runs; after it, the task and its blobs are let go (its values keep
    what they use)."""

    def __init__(self, get_blob: Callable[[wire.pb.Task, str], blobstream.IncomingBlob]) -> None:
        super().__init__()
        self.task: wire.pb.Task | None = None
        self._get_blob = get_blob

    def get(self, blob_id: str, default: Any = None) -> Any:
        blob = super().get(blob_id)
        if blob is None:
            assert self.task is not None
            blob = self[blob_id] = self._get_blob(self.task, blob_id)
        return blob


async def claim(link: BlobLink, blob_id: str) -> blobstream.IncomingBlob:
    """A blob a task needs: uploaded straight here by the client, else from the controller."""
    blob = link.data.take(blob_id) if link.data is not None else None
    sources["client" if blob is not None else "controller"] += 1
    return blob if blob is not None else await download(link, blob_id)


async def download(link: BlobLink, blob_id: str) -> blobstream.IncomingBlob:
    """A blob from the controller (mapped from shared memory on its host when it can be)."""
    download: Any = link.channel.unary_stream(
        f"/{wire.ENGINE_SERVICE}/Download",
        request_serializer=wire.pb.DownloadRequest.SerializeToString,
        response_deserializer=None,
    )
    # On the controller's host the blob may come as shared memory to map (one copy for all
    # engines there); if it cannot be mapped here after all, the bytes are asked for.
    host_key = sharedmem.host_key()
    call = download(wire.pb.DownloadRequest(blob_id=blob_id, host_key=host_key), metadata=link.metadata)
    try:
        return await blobstream.receive(call, blob_id, sharedmem.map_blob if host_key else None)
    except sharedmem.SharedBlobUnusable as exc:
        log.info("%s: downloading the bytes instead", exc)
    call = download(wire.pb.DownloadRequest(blob_id=blob_id), metadata=link.metadata)
    return await blobstream.receive(call, blob_id)


async def upload(link: BlobLink, blob: blobstream.OutgoingBlob) -> None:
    """Send a result blob to the controller."""
    upload: Any = link.channel.stream_unary(
        f"/{wire.ENGINE_SERVICE}/Upload",
        request_serializer=None,
        response_deserializer=wire.pb.UploadReply.FromString,
    )
    await upload(blob.raw_messages(), metadata=link.metadata)
