"""`LoadBalancedView.imap`'s lazy map: inputs read as tasks go out, a bounded number in flight."""

from __future__ import annotations

import collections
import concurrent.futures
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pxgrpc.client.asyncresult import AsyncResult
    from pxgrpc.client.view import View


class LazyMap:
    """An iterator of `f(*args)` for each `args` of `inputs` (which may never end), run as
    tasks of `view` with at most `limit` in flight; results in input order, or as they come.

    The first tasks go out at once; later ones as results are taken. `cancel()` stops reading
    inputs (the tasks in flight still yield their results).
    """

    def __init__(
        self,
        view: View,
        f: Callable[..., Any],
        inputs: Iterator[tuple[Any, ...]],
        limit: int,
        ordered: bool = True,
        return_exceptions: bool = False,
    ) -> None:
        self._view = view
        self._f = f
        self._inputs = inputs
        self._limit = limit
        self._ordered = ordered
        self._return_exceptions = return_exceptions
        self._in_flight: collections.deque[AsyncResult] = collections.deque()
        self._exhausted = False
        self._fill()

    def _fill(self) -> None:
        while not self._exhausted and len(self._in_flight) < self._limit:
            try:
                args = next(self._inputs)
            except StopIteration:
                self._exhausted = True
                return
            self._in_flight.append(self._view.apply_async(self._f, *args))

    def cancel(self) -> None:
        """Read no more inputs."""
        self._exhausted = True

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if not self._in_flight:
            raise StopIteration
        if self._ordered:
            ar = self._in_flight.popleft()
        else:
            done, _ = concurrent.futures.wait(self._in_flight, return_when=concurrent.futures.FIRST_COMPLETED)
            ar = next(a for a in self._in_flight if a in done)
            self._in_flight.remove(ar)
        ar.wait()
        self._fill()
        return ar.get(return_exceptions=self._return_exceptions)
