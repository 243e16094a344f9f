"""ViewExecutor: a `concurrent.futures.Executor` that runs calls on a LoadBalancedView."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pxgrpc.client.asyncresult import AsyncResult
    from pxgrpc.client.balanced import LoadBalancedView


class ViewExecutor(concurrent.futures.Executor):
    """`concurrent.futures.Executor` on a LoadBalancedView; futures are AsyncResults."""

    def __init__(self, view: LoadBalancedView) -> None:
        self.view = view
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> AsyncResult:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        return self.view.apply_async(fn, *args, **kwargs)

    def map(
        self, fn: Callable[..., Any], *iterables: Any, timeout: float | None = None, chunksize: int = 1
    ) -> Iterator[Any]:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        return self.view.imap(fn, *iterables, chunksize=chunksize, max_outstanding=0)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._shutdown = True
        if wait:
            self.view.client.wait()
