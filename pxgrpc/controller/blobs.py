"""Blobs held by the controller between their uploader and their readers.

Chunks are kept as the raw serialized `BlobChunk` messages they arrived as, and are sent on
unchanged: relaying a blob costs no protobuf parse and no copy. A reader may start before the
upload has finished; it follows the upload chunk by chunk.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from pxgrpc import blobstream, sharedmem, wire

log = logging.getLogger(__name__)

#: A complete blob nobody has referenced is dropped after this long (an orphaned upload).
ORPHAN_TTL = 120.0


class BlobError(Exception):
    """A blob stream is malformed or its blob is unusable; the message says which and why."""

    def __init__(self, message: str, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found


class Blob:
    """One blob: its raw chunks as they arrive, and who still needs it."""

    def __init__(self, blob_id: str) -> None:
        self.blob_id = blob_id
        self.size = -1  # unknown until the header arrives
        self.received = 0
        self.chunks: list[bytes] = []
        self.complete = False
        self.failed: str | None = None
        self.uploading = False
        self.refs = 0
        self.referenced = False
        self.created = time.monotonic()
        #: When set (time.monotonic()), the blob is dropped after this time even if referenced.
        self.expires: float | None = None
        #: Its copy in shared memory, made for the first reader on this host that asks.
        self.shared: sharedmem.SharedFile | None = None
        self._sharing: asyncio.Future[sharedmem.SharedFile] | None = None
        self.released = False
        self._changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def _notify(self) -> None:
        if not self._changed.done():
            self._changed.set_result(None)
        self._changed = asyncio.get_running_loop().create_future()

    def fail(self, reason: str) -> None:
        if not self.complete and self.failed is None:
            self.failed = reason
            self._notify()

    def release(self, reason: str) -> None:
        """The store forgets this blob: readers still waiting fail, the shared copy goes."""
        self.fail(reason)
        self.released = True
        if self.shared is not None:
            self.shared.close()

    async def share(self) -> wire.pb.SharedBlob:
        """Where this host's readers find the (complete) blob in shared memory (written once,
        in a worker thread: a large blob takes a while to copy)."""
        if self._sharing is None:
            self._sharing = asyncio.ensure_future(asyncio.to_thread(self._write_shared))
        shared = await asyncio.shield(self._sharing)
        if self.released:
            raise BlobError(f"blob {self.blob_id}: {self.failed or 'released'}")
        return shared.describe()

    def _write_shared(self) -> sharedmem.SharedFile:
        shared = sharedmem.SharedFile(self.size)
        shared.write_chunks(blobstream.parse_data_chunk(raw) for raw in self.chunks)
        self.shared = shared
        if self.released:  # (released while this was writing)
            shared.close()
        return shared

    async def wait_change(self) -> None:
        await asyncio.shield(self._changed)


class BlobStore:
    """All blobs in flight through the controller, by id."""

    def __init__(self) -> None:
        self._blobs: dict[str, Blob] = {}

    def __len__(self) -> int:
        return len(self._blobs)

    @property
    def nbytes(self) -> int:
        return sum(b.received for b in self._blobs.values())

    def _get_or_create(self, blob_id: str) -> Blob:
        blob = self._blobs.get(blob_id)
        if blob is None:
            blob = self._blobs[blob_id] = Blob(blob_id)
        return blob

    def ref(self, blob_id: str) -> None:
        """Someone (a task, a result's reader) will need this blob: keep it until unref."""
        if not wire.BLOB_ID_RE.match(blob_id):
            raise BlobError(f"blob_ids: {blob_id!r} is not 1-64 characters of [A-Za-z0-9_-]")
        blob = self._get_or_create(blob_id)
        blob.refs += 1
        blob.referenced = True

    def unref(self, blob_id: str) -> None:
        blob = self._blobs.get(blob_id)
        if blob is None:
            return
        blob.refs -= 1
        if blob.refs <= 0:
            blob.release("the blob was released before it was complete")
            del self._blobs[blob_id]

    def shared_headers(self, blob_ids: list[str]) -> list[wire.pb.BlobHeader]:
        """Headers saying where this host's readers map those of the blobs that already have a
        shared copy (`share_now`), to send with the tasks that need them."""
        headers = []
        for blob_id in blob_ids:
            blob = self._blobs.get(blob_id)
            if blob is not None and blob.shared is not None and not blob.released:
                header = wire.pb.BlobHeader(blob_id=blob_id, size=blob.size)
                header.shared.CopyFrom(blob.shared.describe())
                headers.append(header)
        return headers

    async def share_now(self, blob_id: str) -> None:
        """Make a complete large blob's shared copy now (before the tasks that need it are
        routed: they then carry where it is, and this host's engines need not ask)."""
        blob = self._blobs.get(blob_id)
        if blob is None or not blob.complete or blob.size < sharedmem.MIN_SHARED:
            return
        try:
            await blob.share()
        except (OSError, BlobError) as exc:
            log.warning("blob %s: no shared copy (%s)", blob_id, exc)

    def size(self, blob_id: str) -> int | None:
        """A blob's size in bytes: None if there is no usable such blob, -1 while its upload has not begun."""
        blob = self._blobs.get(blob_id)
        if blob is None or blob.failed is not None:
            return None
        return blob.size

    def expire(self, blob_id: str, seconds: float) -> None:
        """Drop the blob `seconds` from now whatever holds it (a result nobody came to download)."""
        blob = self._blobs.get(blob_id)
        if blob is not None:
            blob.expires = time.monotonic() + seconds

    def fail(self, blob_id: str, reason: str) -> None:
        blob = self._blobs.get(blob_id)
        if blob is not None:
            blob.fail(reason)

    def drop_orphans(self) -> None:
        """Forget blobs that no task or result ever referenced, and expired ones."""
        now = time.monotonic()
        for blob_id, blob in list(self._blobs.items()):
            if not blob.referenced and now - blob.created > ORPHAN_TTL:
                log.info("dropping unreferenced blob %s (%d bytes)", blob_id, blob.received)
                blob.release("never referenced")
                del self._blobs[blob_id]
            elif blob.expires is not None and now > blob.expires:
                log.info("dropping result blob %s (%d bytes): nobody downloaded it", blob_id, blob.received)
                blob.release("expired before it was downloaded")
                del self._blobs[blob_id]

    async def receive(self, messages: AsyncIterator[bytes]) -> wire.pb.UploadReply:
        """Take an upload stream (raw serialized BlobChunks) into the store."""
        it = aiter(messages)
        try:
            header = await blobstream.read_header(it)
        except wire.DecodingError as exc:
            raise BlobError(str(exc)) from exc
        if header.HasField("shared"):
            raise BlobError("BlobHeader.shared: the controller takes the bytes only (no shared memory)")
        blob = self._get_or_create(header.blob_id)
        if blob.uploading or blob.complete:
            raise BlobError(f"BlobHeader.blob_id: blob {header.blob_id} was already uploaded")
        blob.uploading = True
        blob.size = header.size
        blob._notify()
        try:
            await self._receive_chunks(blob, it)
        except BaseException as exc:
            blob.fail(f"upload failed: {exc}")
            raise
        return wire.pb.UploadReply(blob_id=blob.blob_id, size=blob.size)

    async def _receive_chunks(self, blob: Blob, it: AsyncIterator[bytes]) -> None:
        async for raw in it:
            try:
                data = blobstream.parse_data_chunk(raw)
            except wire.DecodingError as exc:
                raise BlobError(str(exc)) from exc
            if len(data) > blobstream.MAX_CHUNK:
                raise BlobError(f"BlobChunk.data: {len(data)} bytes is more than {blobstream.MAX_CHUNK}")
            if blob.received + len(data) > blob.size:
                raise BlobError(f"BlobChunk.data: more bytes than BlobHeader.size ({blob.size})")
            blob.chunks.append(raw)
            blob.received += len(data)
            blob._notify()
        if blob.received != blob.size:
            raise BlobError(f"BlobChunk.data: stream ended after {blob.received} of {blob.size} bytes")
        blob.complete = True
        blob._notify()

    async def send(
        self, blob_id: str, wait_for_upload: float = 60.0, host_key: str = ""
    ) -> AsyncIterator[bytes]:
        """Stream a blob (raw serialized BlobChunks), following an upload still in progress.

        A reader on this host (`host_key` is this host's) gets a large blob as shared memory to
        map instead, once the upload is complete: one copy serves all of this host's engines.
        """
        blob = self._blobs.get(blob_id)
        if blob is None:
            raise BlobError(f"blob {blob_id!r} not found (never uploaded, or already released)", True)
        deadline = time.monotonic() + wait_for_upload
        while blob.size < 0 and blob.failed is None:
            if time.monotonic() > deadline:
                raise BlobError(f"blob {blob_id}: its upload did not start within {wait_for_upload:.0f} s")
            await asyncio.wait_for(blob.wait_change(), max(0.01, deadline - time.monotonic()))
        if blob.failed is not None:
            raise BlobError(f"blob {blob_id}: {blob.failed}")
        header = wire.pb.BlobChunk(header=wire.pb.BlobHeader(blob_id=blob_id, size=blob.size))
        if host_key and host_key == sharedmem.host_key() and blob.size >= sharedmem.MIN_SHARED:
            while not blob.complete and blob.failed is None:
                await blob.wait_change()
            if blob.failed is not None:
                raise BlobError(f"blob {blob_id}: {blob.failed}")
            try:
                header.header.shared.CopyFrom(await blob.share())
            except OSError as exc:  # (e.g. no memory for the file): the bytes, then
                log.warning("blob %s: no shared copy (%s); streaming it", blob_id, exc)
            else:
                yield header.SerializeToString()
                return
        yield header.SerializeToString()
        index = 0
        while True:
            while index < len(blob.chunks):
                yield blob.chunks[index]
                index += 1
            if blob.complete:
                return
            if blob.failed is not None:
                raise BlobError(f"blob {blob_id}: {blob.failed}")
            await blob.wait_change()
