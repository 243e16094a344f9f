"""The client's results in flight: what it is still waiting for, and waiting for some of it.

`Client.wait`, `Client.wait_interactive`, `Client.outstanding` and `Client.abort` (which jobs)
delegate here. The results are held weakly: one the program dropped is not waited for.
"""

from __future__ import annotations

import concurrent.futures
import weakref
from collections.abc import Callable
from typing import Any

from pxgrpc.client.asyncresult import AsyncResult

#: Turns task ids or history indices into one AsyncResult (`Client.get_result`).
Recall = Callable[[Any], AsyncResult]


class SubmittedResults:
    """The AsyncResults a client made, for waiting on and aborting what is unfinished."""

    def __init__(self, recall: Recall) -> None:
        self._results: weakref.WeakSet[AsyncResult] = weakref.WeakSet()
        self._recall = recall

    def add(self, ar: AsyncResult) -> None:
        """Track a new result."""
        self._results.add(ar)

    def unfinished(self) -> list[AsyncResult]:
        """The tracked results not done yet."""
        return [ar for ar in list(self._results) if not ar.done()]

    def outstanding(self) -> set[str]:
        """Ids of the tracked tasks that have not finished."""
        ids: set[str] = set()
        for ar in list(self._results):
            if not ar.done():
                ids.update(ar.msg_ids[i] for i in ar._events.pending())
        return ids

    def wait(self, jobs: Any = None, timeout: float | None = -1) -> bool:
        """Wait for `jobs` (AsyncResults, futures, task ids or history indices, or a list of
        them), or for everything unfinished; whether all of it is done."""
        pending: list[concurrent.futures.Future[Any]]
        if jobs is None:
            pending = list(self.unfinished())
        else:
            single = isinstance(jobs, str | int | concurrent.futures.Future)
            items = [jobs] if single else list(jobs)
            pending = [j for j in items if isinstance(j, concurrent.futures.Future)]
            ids = [j for j in items if not isinstance(j, concurrent.futures.Future)]
            if ids:
                pending.append(self._recall(ids))
        wait_for = None if timeout is None or timeout < 0 else timeout
        _, not_done = concurrent.futures.wait(pending, wait_for)
        return not not_done

    def wait_interactive(self, jobs: Any = None, interval: float = 1.0, timeout: float = -1) -> None:
        """Wait with a progress bar for `jobs` (as in `wait`), or for everything unfinished."""
        if jobs is None:
            results = self.unfinished()
            if not results:
                return
            ar = AsyncResult.join(*results)
        else:
            ar = self._recall(jobs if isinstance(jobs, list) else [jobs])
        ar.wait_interactive(interval=interval, timeout=timeout)


def task_ids_of(jobs: Any) -> list[str]:
    """The task ids `jobs` names: task ids themselves, or AsyncResults (one or several)."""
    if isinstance(jobs, list | tuple | set) and all(isinstance(j, str) for j in jobs):
        return list(jobs)
    results = [jobs] if isinstance(jobs, AsyncResult) else [j for j in jobs if isinstance(j, AsyncResult)]
    return [tid for ar in results for tid in ar.msg_ids]
