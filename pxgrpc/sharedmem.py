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

A client and an engine of one host move a large blob between them the same way (see
`pxgrpc.client.datapath`), always through a file the client made: a push writes the bytes into
a fresh memfd that the engine maps during the upload call (its reply is the client's signal
that the file may be closed); a pull hands the engine an empty memfd (`DownloadRequest.into`)
that the engine writes the result into (`write_into`) before it answers, and the client then
maps. Nobody writes a file once its reader has mapped it, so each side's value is its own.
`PXGRPC_SHARED_MEMORY=off` turns all of this off (bytes are streamed instead).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import mmap
import os
import stat
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from pxgrpc import blobstream
from pxgrpc import messages as pb

log = logging.getLogger(__name__)

#: Blobs smaller than this are streamed (mapping a file costs more than copying a little).
MIN_SHARED = 256 << 10
#: The blob's bytes start one page into the file (page-aligned: arrays on them are aligned).
OFFSET = mmap.PAGESIZE
_NONCE_BYTES = 16


#: A blob between a client and an engine of one host goes through shared memory from this size
#: (below it, streaming the bytes costs about as much as making and mapping a file).
MIN_POINT_TO_POINT = 1 << 20


def enabled() -> bool:
    """Whether this process shares memory with others of its host: not with
    `PXGRPC_SHARED_MEMORY=off` (or where there is no memfd)."""
    setting = os.environ.get("PXGRPC_SHARED_MEMORY", "auto").lower()
    return setting not in ("off", "0", "no") and hasattr(os, "memfd_create")


def host_key() -> str:
    """This host's identity for shared memory: the kernel's boot id ("" where there is none,
    or sharing is off: then nothing is shared)."""
    return _boot_id() if enabled() else ""


@functools.cache
def _boot_id() -> str:
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

    def write_chunks(self, chunks: Iterable[memoryview], at: int = 0) -> None:
        """Write the blob's bytes, in order (from its byte `at`)."""
        _write_all(self.fd, chunks, OFFSET + at)

    def describe(self, at: int = 0) -> pb.SharedBlob:
        """Where readers (or writers) find the blob's byte `at`."""
        path = f"/proc/{os.getpid()}/fd/{self.fd}"
        return pb.SharedBlob(path=path, nonce=self.nonce, offset=OFFSET + at)

    def write_at(self, at: int, data: memoryview) -> None:
        """Write bytes at the blob's byte `at`."""
        self.write_chunks([data], at)

    def map_array(self, dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
        """The blob as an array of `dtype` and `shape`, mapped privately (its bytes written by
        others first, e.g. the engines of a gather)."""
        nbytes = math.prod(shape) * dtype.itemsize
        if os.fstat(self.fd).st_size < OFFSET + nbytes:
            raise SharedBlobUnusable(f"shared file holds fewer than the array's {nbytes} bytes")
        return _mmap_private(self.fd, OFFSET + nbytes, OFFSET, dtype.str, shape)

    def map(self, blob_id: str, size: int) -> MappedBlob:
        """This file's blob of `size` bytes (written by another process: `write_into`), mapped
        privately. Raises SharedBlobUnusable when the file is shorter than that."""
        return _map_fd(self.fd, blob_id, size, OFFSET, f"blob {blob_id}")

    def read_into(self, into: memoryview) -> None:
        """Copy the blob's first `len(into)` bytes into `into` (e.g. a slice of a gathered array)."""
        position = 0
        while position < into.nbytes:
            read = os.preadv(self.fd, [into[position:]], OFFSET + position)
            if read <= 0:
                raise SharedBlobUnusable(f"shared file ended after {position} of {into.nbytes} bytes")
            position += read

    def close(self) -> None:
        """Drop the sender's copy (readers that mapped it keep their mappings)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class MappedBlob(blobstream.IncomingBlob):
    """A received blob whose bytes are a private (copy-on-write) mapping of a `SharedFile`."""

    def __init__(self, blob_id: str, data: np.ndarray[Any, Any]) -> None:
        self.blob_id = blob_id
        self.size = self.received = data.nbytes
        self.buffer = data  # (bytes of the mapping, which goes with the last array on them)
        self._view = memoryview(data)  # type: ignore[arg-type]


class FilledBlob(blobstream.IncomingBlob):
    """A received blob whose bytes were copied from a shared file into the caller's buffer."""

    in_place = True

    def __init__(self, blob_id: str, into: memoryview) -> None:
        self.blob_id = blob_id
        self.size = self.received = into.nbytes
        self.buffer = np.frombuffer(into, dtype=np.uint8)
        self._view = into
        self.prefaulting = False


class WrittenBlob(blobstream.IncomingBlob):
    """A blob a sender wrote into the receiver's own shared file (`DownloadRequest.into`), where
    the receiver will map it with the rest of the file."""

    in_place = True

    def __init__(self, blob_id: str, size: int) -> None:
        self.blob_id = blob_id
        self.size = self.received = size
        self.prefaulting = False


def map_blob(blob_id: str, header: pb.BlobHeader) -> MappedBlob:
    """Map the shared blob `header` describes, privately. Raises SharedBlobUnusable when the
    file cannot be opened here or is not the one described."""
    return MappedBlob(blob_id, _map_shared(blob_id, header, 0, "|u1", (header.size,)))


def map_array(
    shared: Iterable[pb.BlobHeader], where: pb.BlobSlice, dtype: np.dtype[Any], shape: tuple[int, ...]
) -> np.ndarray[Any, Any]:
    """An array of `dtype` and `shape` on the bytes `where` names, of a blob among `shared` (a
    task's `shared_blobs`), mapped privately: what `map_blob` and an array on a slice of it
    give, in one step. Raises SharedBlobUnusable as `map_blob` does, and when `shared` does not
    name the blob or the slice is not that array's bytes within it."""
    header = next((h for h in shared if h.blob_id == where.blob_id), None)
    if header is None:
        raise SharedBlobUnusable(f"blob {where.blob_id}: no shared copy named")
    at, length = where.offset, where.length
    if min(shape, default=0) < 0 or length != math.prod(shape) * dtype.itemsize:
        raise SharedBlobUnusable(
            f"blob {where.blob_id}: {length} bytes are not an array of shape {list(shape)}"
        )
    if at < 0 or at + length > header.size:
        raise SharedBlobUnusable(f"blob {header.blob_id}: the array runs past the blob's {header.size} bytes")
    return _map_shared(header.blob_id, header, at, dtype.str, shape)


def _map_shared(
    blob_id: str, header: pb.BlobHeader, at: int, typestr: str, shape: tuple[int, ...]
) -> np.ndarray[Any, Any]:
    """The blob's file opened, checked (its nonce) and mapped privately: an array of `typestr`
    and `shape` on its bytes from `at`."""
    shared = header.shared
    nonce, size, offset = shared.nonce, header.size, shared.offset
    if size < 0 or offset < len(nonce) or not nonce:
        raise SharedBlobUnusable(f"blob {blob_id}: malformed SharedBlob")
    fd = _open(shared, os.O_RDONLY, f"blob {blob_id}", offset + size)
    try:
        if os.pread(fd, len(nonce), 0) != nonce:
            raise SharedBlobUnusable(f"blob {blob_id}: {shared.path} is not the blob's file (nonce)")
        return _mmap_private(fd, offset + size, offset + at, typestr, shape)
    except (OSError, ValueError) as exc:
        raise SharedBlobUnusable(f"blob {blob_id}: cannot map {shared.path}: {exc}") from None
    finally:
        os.close(fd)


def write_into(target: pb.SharedBlob, parts: Sequence[memoryview], blob_id: str) -> None:
    """Write a blob's bytes (its `parts`, in order) into a reader's file at `target.offset`,
    after checking the file's nonce. Raises SharedBlobUnusable when the file cannot be opened
    here or is not the one described (the reader then gets the bytes)."""
    if target.offset < len(target.nonce) or not target.nonce:
        raise SharedBlobUnusable(f"blob {blob_id}: malformed DownloadRequest.into")
    fd = _open(target, os.O_RDWR, f"blob {blob_id}")
    try:
        if os.pread(fd, len(target.nonce), 0) != target.nonce:
            raise SharedBlobUnusable(f"blob {blob_id}: {target.path} is not the reader's file (nonce)")
        # (No ftruncate: writers of one gather's file write their parts at once, and a write
        # past the end extends a file without ever shrinking what another wrote.)
        _write_all(fd, parts, target.offset)
    except OSError as exc:
        raise SharedBlobUnusable(f"blob {blob_id}: cannot write {target.path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def _write_all(fd: int, chunks: Iterable[memoryview], position: int) -> None:
    """Write the chunks' bytes in order from `position` (pwrite may write less than asked)."""
    for data in chunks:
        view = memoryview(data)
        view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
        while view.nbytes:
            written = os.pwrite(fd, view, position)
            position += written
            view = view[written:]


def _open(shared: pb.SharedBlob, flags: int, what: str, length: int = 0) -> int:
    """Open the file a `SharedBlob` names: a regular file only (O_NONBLOCK: a path that names
    someone's pipe must not hang us), of at least `length` bytes."""
    try:
        fd = os.open(shared.path, flags | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise SharedBlobUnusable(f"{what}: cannot open {shared.path}: {exc.strerror}") from None
    facts = os.fstat(fd)
    if not stat.S_ISREG(facts.st_mode):
        os.close(fd)
        raise SharedBlobUnusable(f"{what}: {shared.path} is not a shared-memory file")
    if facts.st_size < length:
        os.close(fd)
        raise SharedBlobUnusable(f"{what}: {shared.path} is shorter than the blob ({length} bytes)")
    return fd


def _map_fd(fd: int, blob_id: str, size: int, offset: int, what: str) -> MappedBlob:
    """`size` bytes at `offset` of an open file, mapped privately (copy-on-write)."""
    length = offset + size
    try:
        if os.fstat(fd).st_size < length:
            raise SharedBlobUnusable(f"{what}: the file is shorter than the blob's {size} bytes")
        data = _mmap_private(fd, length, offset, "|u1", (size,))
    except (OSError, ValueError) as exc:
        raise SharedBlobUnusable(f"{what}: cannot map it: {exc}") from None
    return MappedBlob(blob_id, data)


def is_mapped(array: np.ndarray[Any, Any]) -> bool:
    """Whether an array's bytes are a mapping of a shared file made here (`_mmap_private`),
    through the arrays and memoryviews it was made on."""
    base: Any = array
    for _ in range(8):
        if isinstance(base, _Mapping):
            return True
        base = base.obj if isinstance(base, memoryview) else getattr(base, "base", None)
        if base is None:
            return False
    return False


_PROT_READ_WRITE = mmap.PROT_READ | mmap.PROT_WRITE


def prepare() -> None:
    """Load what mapping a shared value needs now, not on the first one (a process that forks
    engines does this once for all of them)."""
    _libc()


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    c_int = ctypes.c_int
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, c_int, c_int, c_int, ctypes.c_long]
    libc.mmap.restype = ctypes.c_void_p
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.munmap.restype = ctypes.c_int
    return libc


def _mmap_private(
    fd: int, length: int, offset: int, typestr: str, shape: tuple[int, ...]
) -> np.ndarray[Any, Any]:
    """The first `length` bytes of a file mapped privately, as an array of `shape` and dtype
    `typestr` on its bytes from `offset`; the mapping goes with the last array on it. (Python's
    `mmap.mmap` would keep a duplicate of the file descriptor open for as long: one open file
    per received array.)"""
    libc = _libc()
    address = libc.mmap(None, length, _PROT_READ_WRITE, mmap.MAP_PRIVATE, fd, 0)
    if address in (None, _MAP_FAILED):
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return np.asarray(_Mapping(address, length, address + offset, typestr, shape))


_MAP_FAILED = ctypes.c_void_p(-1).value


class _Mapping:
    """A mapping made by `_mmap_private`, as numpy sees it (`__array_interface__`: one Python
    type for every size, where a ctypes array would need a type per size): it is the base of
    the array on it, and unmaps the whole mapping when it goes."""

    __slots__ = ("__array_interface__", "_address", "_length")

    #: An array on all of it owns it (`partition.tiled`).
    whole_buffer = True

    def __init__(self, address: int, length: int, data: int, typestr: str, shape: tuple[int, ...]) -> None:
        self._address = address
        self._length = length
        self.__array_interface__ = {"data": (data, False), "shape": shape, "typestr": typestr, "version": 3}

    def __del__(self) -> None:
        _libc().munmap(self._address, self._length)
