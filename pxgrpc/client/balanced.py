"""LoadBalancedView: each task runs once, on whichever engine is least busy."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pxgrpc.client.asyncresult import AsyncResult
from pxgrpc.client.dependencies import as_dependency, dependency_timeout
from pxgrpc.client.lazymap import LazyMap
from pxgrpc.client.targets import Targets
from pxgrpc.client.tasks import Action, Apply, Constraints, Job
from pxgrpc.client.view import View
from pxgrpc.dependency import Dependency, Dependent
from pxgrpc.partition import chunk, join_parts, map_chunk

if TYPE_CHECKING:
    from pxgrpc.client.client import Client


class LoadBalancedView(View):
    """Each task runs once, on the least busy engine.

    >>> lview = rc.load_balanced_view()
    >>> lview.map_sync(lambda x: x * x, range(100))

    Dependencies between tasks (`pxgrpc.dependency`), as flags (`set_flags`, `temp_flags`) or
    per `map` call: `after` (start once these tasks are done), `follow` (run where they ran),
    `timeout` (seconds to wait for them, then `DependencyTimeout`; 0 or None: no limit).

    >>> with lview.temp_flags(after=ar, follow=ar):
    ...     lview.apply(use_what_ar_left_behind)
    """

    def __init__(self, client: Client, targets: Targets = None, block: bool | None = None) -> None:
        super().__init__(client, targets, block)
        self.retries = 0
        self.after = Dependency()
        self.follow = Dependency()
        self.timeout: float | None = 0.0

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.targets}>"
            if self.targets is not None
            else f"<{type(self).__name__} None>"
        )

    def set_flags(self, **flags: Any) -> None:
        """Set view attributes: `block`, `retries`, `after`, `follow`, `timeout`."""
        if "after" in flags:
            flags["after"] = as_dependency(flags["after"])
        if "follow" in flags:
            flags["follow"] = as_dependency(flags["follow"])
        if "timeout" in flags:
            flags["timeout"] = dependency_timeout(flags["timeout"])
        super().set_flags(**flags)

    def _constraints(self, f: Any, after: Any, follow: Any, timeout: Any) -> Constraints:
        return Constraints(
            after=as_dependency(self.after if after is None else after),
            follow=as_dependency(self.follow if follow is None else follow),
            timeout=dependency_timeout(self.timeout if timeout is None else timeout),
            recheck=isinstance(f, Dependent),
        )

    def _placement(self) -> int | None:
        """Where tasks go: None (the controller balances them), or the engine of a view on one
        engine (`rc.load_balanced_view(-1)`). A view on several engines balances over all."""
        if isinstance(self.targets, list) and len(self.targets) == 1:
            return int(self.targets[0])
        return None

    def _apply(self, f: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]) -> AsyncResult:
        name = getattr(f, "__name__", "apply")
        constraints = self._constraints(f, None, None, None)
        return self._submit(
            Job(
                name,
                [self._placement()],
                Apply(f, args, kwargs),
                single=True,
                retries=self.retries,
                constraints=constraints,
            )
        )

    def map(
        self,
        f: Callable[..., Any],
        *sequences: Sequence[Any],
        block: bool | None = None,
        chunksize: int | None = None,
        ordered: bool = True,
        return_exceptions: bool = False,
        after: Any = None,
        follow: Any = None,
        timeout: float | None = None,
        **kw: Any,
    ) -> Any:
        """`map(f, *sequences)` as load-balanced tasks of `chunksize` items each (default 1).

        `return_exceptions`: a failed task's exception in place of its items, instead of raising.
        `after`, `follow`, `timeout`: this call's dependencies (default: the view's flags).
        """
        if kw:
            raise TypeError(f"LoadBalancedView.map: unexpected arguments {sorted(kw)}")
        if not sequences:
            raise TypeError("map needs at least one sequence")
        size = chunksize or 1
        if size < 1:
            raise ValueError(f"chunksize must be at least 1, not {size}")
        materialized = [
            s if hasattr(s, "__getitem__") and hasattr(s, "__len__") else list(s) for s in sequences
        ]
        length = min(len(s) for s in materialized)
        mapper = functools.partial(map_chunk, f)
        applies: list[Action] = []
        sizes = []
        for start in range(0, length, size):
            stop = min(start + size, length)
            applies.append(Apply(mapper, [chunk(s, start, stop) for s in materialized]))
            sizes.append(stop - start)
        job = Job(
            getattr(f, "__name__", "map"),
            [self._placement()] * len(applies),
            each=applies,
            join=join_parts,
            ordered=ordered,
            retries=self.retries,
            return_exceptions=return_exceptions,
            constraints=self._constraints(f, after, follow, timeout),
            sizes=sizes,
        )
        return self._finish(self._submit(job), block)

    def imap(
        self,
        f: Callable[..., Any],
        *sequences: Any,
        ordered: bool = True,
        max_outstanding: int | str = "auto",
        return_exceptions: bool = False,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """Like map, but lazy: an iterator of results, each yielded as soon as it is available.

        The inputs are read as tasks are sent, at most `max_outstanding` tasks in flight
        (default "auto": one per engine), so an endless generator works. `max_outstanding=0`
        reads all inputs at once and sends them as one map (faster for finite inputs; then
        `chunksize` items go in each task). `ordered=False` yields results as they come.
        """
        if not sequences:
            raise TypeError("imap needs at least one sequence")
        if max_outstanding == "auto":
            max_outstanding = max(1, len(self))
        if not isinstance(max_outstanding, int) or max_outstanding < 0:
            raise ValueError(f"max_outstanding must be 'auto' or an int >= 0, not {max_outstanding!r}")
        if max_outstanding == 0:
            ar = self.map(
                f,
                *sequences,
                block=False,
                chunksize=chunksize,
                ordered=ordered,
                return_exceptions=return_exceptions,
            )
            return iter(ar)
        return LazyMap(self, f, zip(*sequences, strict=False), max_outstanding, ordered, return_exceptions)
