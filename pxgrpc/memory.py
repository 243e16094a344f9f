"""How pxgrpc processes reuse the memory of large buffers.

gRPC hands every received message to Python as a fresh allocation (1 MB chunks for bulk data),
and received arrays land in large buffers (see `blobstream.IncomingBlob`). By default glibc maps large
allocations afresh, unmaps them when they are freed and trims its heap whenever a few MB at its
top are free, so a stream of chunks keeps asking the kernel for new pages to fault in: pushing
or pulling a 64 MB array again and again then runs at half its speed or worse.

Two profiles tune glibc (`mallopt`) once per process:
- "chunks" (clients and the controller, by default): allocations below 32 MB come from the heap,
  and up to 64 MB freed at its top is kept: where glibc's own adaptive thresholds end up after
  a few large frees, from the start. Chunks (and the few-MB lists that unpickling builds) reuse
  pages that are already mapped, while larger arrays are still mapped and unmapped.
- "all" (engines, by default; clients with `PXGRPC_REUSE_MEMORY=on`): allocations below 1 GB come
  from the heap and up to 128 MB freed is kept, so received arrays reuse memory too.

`PXGRPC_REUSE_MEMORY=off` leaves the allocator alone.

A buffer that is fresh from the kernel still costs the first transfer into it a page fault per
page, and for the huge pages numpy asks for, often a compaction stall of 100-250 ms on a busy
machine (the kernel defragments memory to find them): the first 64 MB push or pull then ran at
a third of the speed of later ones. `prefault_async` asks for small pages on such a buffer
(a steady cost, ~40 ms for 64 MB) and faults them in on a background thread
(`MADV_POPULATE_WRITE`, Linux 5.14+) a few MB ahead of the writer, while the bytes are still on
their way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import mmap
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)

#: (glibc serves allocations below this from its heap, keeps this much freed memory) per profile.
PROFILES = {
    "chunks": (32 << 20, 64 << 20),
    "all": (1 << 30, 128 << 20),
}

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_done = False


def reuse_freed_memory(default: str = "all") -> None:
    """Tune this process's allocator for repeated large transfers (once; no-op without glibc).

    `default` is the profile used when `PXGRPC_REUSE_MEMORY` is unset: "all" for engines,
    "chunks" for clients (the client is the user's own process). The variable can say `off`,
    `on` (the "all" profile), or a profile's name.
    """
    global _done
    if _done:
        return
    setting = os.environ.get("PXGRPC_REUSE_MEMORY", default).lower()
    if setting in ("off", "0", "no"):
        return
    profile = PROFILES.get("all" if setting in ("on", "1", "yes") else setting)
    if profile is None:
        log.warning("PXGRPC_REUSE_MEMORY=%s: expected off, on, chunks or all; leaving malloc alone", setting)
        return
    _done = True
    name = ctypes.util.find_library("c")
    if not name:
        return
    heap_below, keep_freed = profile
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(_M_MMAP_THRESHOLD, heap_below)
        libc.mallopt(_M_TRIM_THRESHOLD, keep_freed)
    except (OSError, AttributeError) as exc:
        log.debug("mallopt unavailable: %s", exc)


_MADV_NOHUGEPAGE = 15
_MADV_POPULATE_WRITE = 23
#: How far the background thread faults in at a time (it skips what the writer has passed).
PREFAULT_STEP = 4 << 20
_PAGE = mmap.PAGESIZE
_prefault_lock = threading.Lock()
_prefaulter: ThreadPoolExecutor | None = None
_madvise: Callable[[int, int, int], int] | None = None
_prefault_works = True


def _forget_prefaulter() -> None:
    global _prefaulter
    _prefaulter = None  # (a forked child has none of its parent's threads)


os.register_at_fork(after_in_child=_forget_prefaulter)


def _libc_madvise() -> Callable[[int, int, int], int] | None:
    global _madvise
    if _madvise is None:
        name = ctypes.util.find_library("c")
        if not name:
            return None
        try:
            fn = ctypes.CDLL(name, use_errno=True).madvise
        except (OSError, AttributeError):
            return None
        fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        fn.restype = ctypes.c_int
        _madvise = fn
    return _madvise


def prefault_async(address: int, size: int, written: Callable[[], int | None]) -> bool:
    """Fault in `size` bytes at `address` (a buffer about to be filled front to back) on a
    background thread; return whether that was started.

    `written()` says how many bytes the writer has filled so far (those pages need no help), or
    None once the buffer is gone. Contents are never changed: populating only maps pages, so a
    buffer freed meanwhile comes to no harm. A no-op where the kernel or libc cannot do it.
    """
    global _prefaulter
    if not _prefault_works or size < PREFAULT_STEP:
        return False
    madvise = _libc_madvise()
    if madvise is None:
        return False
    start = -(-address // _PAGE) * _PAGE
    # Small pages: faulting in 64 MB of them costs a steady ~40 ms of kernel time, where huge
    # pages (which numpy asks for) cost 10 ms or, when the kernel must compact memory to find
    # them, 100-250 ms (measured on a busy 2-core machine).
    madvise(start, (address + size) // _PAGE * _PAGE - start, _MADV_NOHUGEPAGE)
    with _prefault_lock:
        if _prefaulter is None:
            _prefaulter = ThreadPoolExecutor(1, thread_name_prefix="pxgrpc-prefault")
        pool = _prefaulter
    pool.submit(_populate, madvise, address, size, written)
    return True


def _populate(
    madvise: Callable[[int, int, int], int], address: int, size: int, written: Callable[[], int | None]
) -> None:
    global _prefault_works
    start = -(-address // _PAGE) * _PAGE  # whole pages inside the buffer only
    end = (address + size) // _PAGE * _PAGE
    pos = start
    while pos < end:
        done = written()
        if done is None:
            return
        pos = max(pos, -(-(address + done) // _PAGE) * _PAGE)
        length = min(PREFAULT_STEP, end - pos)
        if length <= 0:
            return
        if madvise(pos, length, _MADV_POPULATE_WRITE) != 0:
            if ctypes.get_errno() == 22:  # EINVAL: a kernel without MADV_POPULATE_WRITE
                _prefault_works = False
            return
        pos += length
