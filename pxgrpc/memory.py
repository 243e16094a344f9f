"""How pxgrpc processes reuse the memory of large buffers.

Received arrays land in freshly allocated buffers (see `wire.IncomingBlob`). By default glibc
maps every large allocation afresh and unmaps it when it is freed, so each received array needs
new pages that the kernel must fault in (and, for huge pages, often compact memory for first):
pulling or pushing a 64 MB array again and again then runs at a third of its speed or worse.
`reuse_freed_memory` makes glibc serve large allocations from its heap and keep some freed
memory for the next ones, which then reuse pages that are already mapped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

#: glibc serves allocations below this from its heap instead of fresh mmaps ...
HEAP_ALLOCATIONS_BELOW = 1 << 30
#: ... and keeps up to this much freed memory at the top of the heap for reuse.
KEEP_FREED = 128 << 20

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_done = False


def reuse_freed_memory(default: str = "on") -> None:
    """Tune this process's allocator for repeated large transfers (once; no-op without glibc).

    `PXGRPC_REUSE_MEMORY=off` leaves the allocator alone, `=on` tunes it; without the variable,
    `default` decides (engines: on; clients: off, since the client is the user's own process).
    """
    global _done
    if _done or os.environ.get("PXGRPC_REUSE_MEMORY", default).lower() in ("off", "0", "no"):
        return
    _done = True
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(_M_MMAP_THRESHOLD, HEAP_ALLOCATIONS_BELOW)
        libc.mallopt(_M_TRIM_THRESHOLD, KEEP_FREED)
    except (OSError, AttributeError) as exc:
        log.debug("mallopt unavailable: %s", exc)
