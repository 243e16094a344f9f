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
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

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
