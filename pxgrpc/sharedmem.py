"""Blobs shared through memory by the processes of one host.

A value pushed (or passed to `apply`/`execute`) to many engines goes up once, to the controller.
An engine on the controller's host then does not download it: the controller writes the blob
once into a memfd, and each such engine maps that file privately (copy-on-write). The engines
share the pages until one writes to its value, which then gets a page of its own: every engine's
value is its own, and the host holds one copy of the payload however many engines read it.

Who may map: a reader says which host it is on (`host_key()`, the kernel's boot id) and the
controller answers with a `SharedBlob` only when that is its own. The reader opens the path
(`/proc/PID/fd/N` of the controller's memfd: only processes of the same user can) and checks
the nonce written at the start of the file before it trusts it; otherwise it asks again for the
bytes (`SharedBlobUnusable`).
"""

from __future__ import annotations

import functools
import logging
import mmap
import os
from collections.abc import Iterable

import numpy as np

from pxgrpc import blobstream
from pxgrpc import messages as pb

log = logging.getLogger(__name__)

#: Blobs smaller than this are streamed (mapping a file costs more than copying a little).
MIN_SHARED = 256 << 10
#: The blob's bytes start one page into the file (page-aligned: arrays on them are aligned).
OFFSET = mmap.PAGESIZE
_NONCE_BYTES = 16


@functools.cache
def host_key() -> str:
    """This host's identity for shared memory: the kernel's boot id ("" where there is none:
    then nothing is shared)."""
    if not hasattr(os, "memfd_create"):
        return ""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


class SharedBlobUnusable(Exception):
    """A `SharedBlob` cannot be mapped here (another host, user or PID namespace): ask for the
    bytes instead."""


class SharedFile:
    """One blob written into a memfd, for this host's readers to map (the sender's side)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.nonce = os.urandom(_NONCE_BYTES)
        self.fd = os.memfd_create("pxgrpc-blob", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, OFFSET + size)
            os.pwrite(self.fd, self.nonce, 0)
        except OSError:
            os.close(self.fd)
            raise

    def write_chunks(self, chunks: Iterable[memoryview]) -> None:
        """Write the blob's bytes, in order."""
        position = OFFSET
        for data in chunks:
            view = memoryview(data)
            while view.nbytes:
                written = os.pwrite(self.fd, view, position)
                position += written
                view = view[written:]

    def describe(self) -> pb.SharedBlob:
        return pb.SharedBlob(path=f"/proc/{os.getpid()}/fd/{self.fd}", nonce=self.nonce, offset=OFFSET)

    def close(self) -> None:
        """Drop the sender's copy (readers that mapped it keep their mappings)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class MappedBlob(blobstream.IncomingBlob):
    """A received blob whose bytes are a private (copy-on-write) mapping of a `SharedFile`."""

    def __init__(self, blob_id: str, size: int, mapping: mmap.mmap, offset: int) -> None:
        self.blob_id = blob_id
        self.size = size
        self.buffer = np.frombuffer(mapping, dtype=np.uint8, count=size, offset=offset)
        self._view = memoryview(self.buffer)  # type: ignore[arg-type]
        self.received = size


def map_blob(blob_id: str, header: pb.BlobHeader) -> MappedBlob:
    """Map the shared blob `header` describes, privately. Raises SharedBlobUnusable when the
    file cannot be opened here or is not the one described."""
    shared = header.shared
    if header.size < 0 or shared.offset < len(shared.nonce) or not shared.nonce:
        raise SharedBlobUnusable(f"blob {blob_id}: malformed SharedBlob")
    length = shared.offset + header.size
    try:
        fd = os.open(shared.path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SharedBlobUnusable(f"blob {blob_id}: cannot open {shared.path}: {exc.strerror}") from None
    try:
        if os.fstat(fd).st_size < length:
            raise SharedBlobUnusable(f"blob {blob_id}: {shared.path} is not the blob's file")
        mapping = mmap.mmap(fd, length, access=mmap.ACCESS_COPY)
    except (OSError, ValueError) as exc:
        raise SharedBlobUnusable(f"blob {blob_id}: cannot map {shared.path}: {exc}") from None
    finally:
        os.close(fd)
    if mapping[: len(shared.nonce)] != shared.nonce:
        mapping.close()
        raise SharedBlobUnusable(f"blob {blob_id}: {shared.path} is not the blob's file (nonce)")
    return MappedBlob(blob_id, header.size, mapping, shared.offset)
