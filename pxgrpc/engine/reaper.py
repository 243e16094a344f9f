"""Freeing, in a thread of its own, the shared-memory arrays a push replaced.

The last engine to let go of an array mapped from a shared file (`pxgrpc.sharedmem`) frees the
file's pages: about 8 ms for 64 MB. Done by the main thread after a push's reply, that held up
the task behind it (say the pull that follows): the reaper's thread does it instead, while the
main thread goes on (the unmapping runs without the GIL). Only such arrays: freeing them runs
no user code, where freeing another object could (`__del__`), and that stays in the main thread.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import numpy as np

from pxgrpc import sharedmem


class Reaper:
    """Frees lists of mapped arrays (`take`, then `free`) in a daemon thread, started on first use."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[list[Any]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    @staticmethod
    def take(values: list[Any]) -> list[Any]:
        """Move the arrays on shared memory out of `values` into a list of their own."""
        mapped: list[Any] = []
        kept: list[Any] = []
        for value in values:
            (mapped if isinstance(value, np.ndarray) and sharedmem.is_mapped(value) else kept).append(value)
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
