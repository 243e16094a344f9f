"""Freeing, in a thread of its own, the large shared-memory arrays a push replaced.

The last engine to let go of an array mapped from a shared file (`pxgrpc.sharedmem`) frees the
file's pages: about 8 ms for 64 MB. Done by the main thread after a push's reply, that held up
the task behind it (say the pull that follows): the reaper's thread does it instead, while the
main thread goes on (the unmapping runs without the GIL). Only such arrays: freeing them runs
no user code, where freeing another object could (`__del__`), and that stays in the main thread.
And only large ones (`MIN_REAPED`): handing an array over wakes the thread, and the two threads
trade the GIL, which costs every engine of a broadcast more than freeing a smaller array does
(at most about 2 ms, and only on the engine that lets go last; for the others, unmapping costs
microseconds).
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import numpy as np

from pxgrpc import sharedmem

#: Replaced arrays on shared memory from this size are freed by the reaper's thread.
MIN_REAPED = 16 << 20


class Reaper:
    """Frees lists of mapped arrays (`take`, then `free`) in a daemon thread, started on first use."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[list[Any]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    @staticmethod
    def take(values: list[Any]) -> list[Any]:
        """Move the large arrays on shared memory out of `values` into a list of their own."""
        mapped: list[Any] = []
        kept: list[Any] = []
        for value in values:
            reaped = (
                isinstance(value, np.ndarray) and value.nbytes >= MIN_REAPED and sharedmem.is_mapped(value)
            )
            (mapped if reaped else kept).append(value)
        values[:] = kept
        return mapped

    def free(self, values: list[Any]) -> None:
        """Let the reaper's thread drop these values (the caller keeps no other reference)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pxgrpc-reaper", daemon=True)
            self._thread.start()
        self._queue.put(values)

    def _run(self) -> None:
        while True:
            self._queue.get().clear()
