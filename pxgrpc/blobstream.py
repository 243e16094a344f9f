"""Blob streams: large buffers moved next to the messages that reference them.

A message keeps only small data inline; its large buffers (array data, pickle buffers) go into
one *blob*, and the message holds `BlobSlice`s into it. A blob travels as a stream of
`BlobChunk` messages: a header (its id and size), then data chunks of CHUNK_SIZE bytes at most.
Data chunks are built and parsed here by hand, so that the controller can relay them as raw
bytes (no protobuf parse, no copy per hop) and a receiver can write them straight into one
preallocated buffer.

`wire.Encoder` collects a value's large buffers into an `OutgoingBlob`; `receive` assembles a
blob stream (an upload or a download) into an `IncomingBlob`, and `wire.decode` reads from
those. The message classes come from `pxgrpc.messages` (as `wire.pb`).
"""

from __future__ import annotations

import os
import re
import sys
import threading
import uuid
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pxgrpc import memory
from pxgrpc import messages as pb

#: Size of the data chunks of a blob stream.
CHUNK_SIZE = 2 * 1024 * 1024
#: Largest data chunk a peer may send.
MAX_CHUNK = 8 * 1024 * 1024
#: What blob ids look like (chosen by uploaders).
BLOB_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class DecodingError(ValueError):
    """A message from a peer (a `Value`, a blob stream) is malformed; the message names the
    offending field."""


def new_id() -> str:
    """A fresh blob id: 32 random hex digits (so it matches BLOB_ID_RE).

    Task ids are not made here: the client numbers its tasks (`Submitter.new_task_ids`).
    """
    return uuid.uuid4().hex


# --- outgoing blobs -------------------------------------------------------------------------------


def direct_data_enabled() -> bool:
    """Whether engines may serve, and clients use, direct data endpoints: not with
    `PXGRPC_DATA_ENDPOINT=off` (everything then goes through the controller)."""
    return os.environ.get("PXGRPC_DATA_ENDPOINT", "auto").lower() not in ("off", "0", "no")


@dataclass
class OutgoingBlob:
    """Buffers that one message references, to be streamed as one blob."""

    blob_id: str = field(default_factory=new_id)
    parts: list[memoryview] = field(default_factory=list)
    size: int = 0

    def add(self, buf: memoryview) -> pb.BlobSlice:
        """Append a buffer; return where it will sit in the blob."""
        view = buf.cast("B") if buf.format != "B" or buf.ndim != 1 else buf
        ref = pb.BlobSlice(blob_id=self.blob_id, offset=self.size, length=view.nbytes)
        self.parts.append(view)
        self.size += view.nbytes
        return ref

    def raw_messages(self) -> Iterator[bytes]:
        """The serialized `BlobChunk` stream: header, then data chunks of CHUNK_SIZE at most."""
        header = pb.BlobChunk(header=pb.BlobHeader(blob_id=self.blob_id, size=self.size))
        yield header.SerializeToString()
        for part in self.parts:
            for start in range(0, part.nbytes, CHUNK_SIZE):
                yield encode_data_chunk(part[start : start + CHUNK_SIZE])


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_data_chunk(data: memoryview | bytes) -> bytes:
    """`BlobChunk(data=...)` serialized with a single copy of the data."""
    return b"".join((b"\x0a", _varint(len(data)), data))


def parse_data_chunk(raw: bytes) -> memoryview:
    """The data of a serialized `BlobChunk(data=...)`, without copying it.

    Raises DecodingError when `raw` is not a data chunk (e.g. a second header).
    """
    if not raw or raw[0] != 0x0A:
        raise DecodingError("BlobChunk: expected a data chunk (field 1) after the header")
    length = 0
    shift = 0
    pos = 1
    while True:
        if pos >= len(raw) or shift > 63:
            raise DecodingError("BlobChunk.data: truncated length")
        byte = raw[pos]
        length |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            break
        shift += 7
    if pos + length != len(raw):
        raise DecodingError("BlobChunk.data: length does not match the message size")
    return memoryview(raw)[pos:]


def parse_header(raw: bytes) -> pb.BlobHeader:
    """The header of a blob stream (its first message)."""
    try:
        chunk = pb.BlobChunk.FromString(raw)
    except Exception as exc:  # protobuf raises DecodeError, a bare Exception subclass
        raise DecodingError(f"BlobChunk: not a valid message ({exc})") from exc
    if chunk.WhichOneof("part") != "header":
        raise DecodingError("BlobChunk.header: the first message of a blob stream must be a header")
    return chunk.header


async def read_header(messages: AsyncIterator[bytes], blob_id: str | None = None) -> pb.BlobHeader:
    """Read the header of a blob stream (its first message) and check it.

    `blob_id` is the blob the receiver asked for (a download); without it the peer sent the blob
    of its own accord (an upload) and the header's id must be a valid blob id. Raises
    DecodingError naming the field, or, for a download, the blob whose stream ended early.
    """
    try:
        first = await anext(messages)
    except StopAsyncIteration:
        raise DecodingError(_ended_early(blob_id, "BlobChunk.header: empty upload stream")) from None
    header = parse_header(first)
    if blob_id is None and not BLOB_ID_RE.match(header.blob_id):
        raise DecodingError(f"BlobHeader.blob_id: {header.blob_id!r} is not 1-64 characters of [A-Za-z0-9_-]")
    if header.size < 0:
        raise DecodingError("BlobHeader.size: must not be negative")
    return header


async def receive(
    messages: AsyncIterable[bytes],
    blob_id: str | None = None,
    on_shared: Callable[[str, pb.BlobHeader], IncomingBlob] | None = None,
    into: memoryview | None = None,
) -> IncomingBlob:
    """Assemble a blob from a stream of raw `BlobChunk`s (header first) into one buffer.

    A receiver that takes shared memory passes `on_shared`: it makes the blob when the header
    says where the bytes are instead of sending them (`pxgrpc.sharedmem`); no data may follow.

    `into`: where the bytes should land (a writable byte view, e.g. a slice of the array a gather
    builds), used when the header's size is exactly its length; else a buffer of its own.

    `blob_id` is as for `read_header`: the blob asked for in a download (it names the result,
    whatever the header says), or None for an upload (the header names the blob). Raises
    DecodingError when a message is malformed or the stream ends before the header's size.

        blob = await blobstream.receive(call, blob_id)  # call: a Download's raw responses
    """
    it = aiter(messages)
    header = await read_header(it, blob_id)
    if blob_id is not None and header.blob_id != blob_id:
        raise DecodingError(f"BlobHeader.blob_id: {header.blob_id!r}, but blob {blob_id} was asked for")
    if header.HasField("shared"):
        if on_shared is None:
            raise DecodingError("BlobHeader.shared: this receiver takes the bytes only (no shared memory)")
        async for _ in it:  # (read to the end first: an uploader is then done sending)
            raise DecodingError("BlobChunk.data: no data may follow a header with `shared`")
        return on_shared(header.blob_id if blob_id is None else blob_id, header)
    try:
        target = into if into is not None and into.nbytes == header.size else None
        blob = IncomingBlob(blob_id if blob_id is not None else header.blob_id, header.size, target)
    except MemoryError:
        raise DecodingError(f"BlobHeader.size: {header.size} bytes cannot be allocated here") from None
    async for raw in it:
        data = parse_data_chunk(raw)
        if len(data) > MAX_CHUNK:
            raise DecodingError(f"BlobChunk.data: {len(data)} bytes is more than {MAX_CHUNK}")
        blob.write(data)
    if not blob.complete:
        short = f"BlobChunk.data: stream ended after {blob.received} of {blob.size} bytes"
        raise DecodingError(_ended_early(blob_id, short))
    return blob


def _ended_early(blob_id: str | None, upload_message: str) -> str:
    """What to say when a blob stream stops early: the download's blob, or the upload's field."""
    return f"blob {blob_id}: the download ended early" if blob_id is not None else upload_message


class ReceiveBuffers:
    """Large receive buffers, reused once nothing refers to them any more.

    A received array lives in its blob's buffer for as long as the user keeps it. Allocating a
    fresh buffer for every blob makes the kernel fault in (and often compact) new pages each
    time, which halves the speed of repeated large transfers or worse; so buffers of at least
    `min_size` bytes are remembered (up to `limit` bytes in all) and handed out again once only
    this pool refers to them (no array, view or memoryview of them is left).
    """

    def __init__(self, min_size: int = 16 << 20, limit: int = 512 << 20) -> None:
        self.min_size = min_size
        self.limit = limit
        self._buffers: list[np.ndarray[Any, np.dtype[np.uint8]]] = []
        self._lock = threading.Lock()

    def take(self, size: int) -> np.ndarray[Any, np.dtype[np.uint8]]:
        """A writable buffer of `size` bytes (its contents are garbage)."""
        return self.take_fresh(size)[0]

    def take_fresh(self, size: int) -> tuple[np.ndarray[Any, np.dtype[np.uint8]], bool]:
        """A writable buffer of `size` bytes, and whether it is a new allocation (its pages
        not faulted in yet) rather than one reused."""
        if size < self.min_size:
            return np.empty(size, dtype=np.uint8), True
        with self._lock:
            for i in range(len(self._buffers)):
                buf = self._buffers[i]
                # 3 references: the list, `buf` and getrefcount's argument: nobody else holds it.
                if size <= buf.nbytes <= 2 * size and sys.getrefcount(buf) == 3:
                    self._buffers.append(self._buffers.pop(i))
                    return buf[:size], False
            buf = np.empty(size, dtype=np.uint8)
            self._buffers.append(buf)
            total = sum(b.nbytes for b in self._buffers)
            while total > self.limit and len(self._buffers) > 1:
                total -= self._buffers.pop(0).nbytes  # forget the least recently used
            return buf, True


#: The receive buffers of this process.
receive_buffers = ReceiveBuffers()


class IncomingBlob:
    """A blob being received: preallocated once, filled chunk by chunk.

    The buffer is a numpy allocation from `receive_buffers`: untouched until written (no zeroing
    pass), backed by huge pages where the kernel offers them, and reused for later blobs once
    the data received in it is no longer referenced.
    """

    #: Whether the bytes landed in the caller's `into` (a byte view of exactly `size` bytes).
    in_place = False

    def __init__(self, blob_id: str, size: int, into: memoryview | None = None) -> None:
        if size < 0:
            raise DecodingError("BlobHeader.size: must not be negative")
        self.blob_id = blob_id
        self.size = size
        self.received = 0
        if into is not None:
            self.in_place = True
            self.buffer = np.frombuffer(into, dtype=np.uint8)
            self._view = into
            fresh = True  # (e.g. the array a gather just made; faulting in what is there is cheap)
        else:
            self.buffer, fresh = receive_buffers.take_fresh(size)
            self._view = memoryview(self.buffer)  # type: ignore[arg-type]
        #: Whether a background thread faults the buffer's pages in ahead of the writes.
        self.prefaulting = False
        if fresh and size >= receive_buffers.min_size:
            ref = weakref.ref(self)

            def written() -> int | None:
                blob = ref()
                return None if blob is None or blob.complete else blob.received

            self.prefaulting = memory.prefault_async(self.buffer.ctypes.data, size, written)

    def write(self, data: memoryview) -> None:
        end = self.received + len(data)
        if end > self.size:
            raise DecodingError(f"blob {self.blob_id}: more data than the header's size {self.size}")
        self._view[self.received : end] = data
        self.received = end

    @property
    def complete(self) -> bool:
        return self.received == self.size

    def slice(self, ref: pb.BlobSlice) -> memoryview:
        if ref.offset < 0 or ref.length < 0 or ref.offset + ref.length > self.size:
            raise DecodingError(f"BlobSlice: offset/length outside blob {ref.blob_id} of {self.size} bytes")
        return self._view[ref.offset : ref.offset + ref.length]
