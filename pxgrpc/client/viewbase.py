"""View: what direct and load-balanced views share (a client, targets, blocking mode, history).

The views themselves live in `pxgrpc.client.view` (`DirectView`) and `pxgrpc.client.balanced`
(`LoadBalancedView`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pxgrpc.client.asyncresult import AsyncResult
from pxgrpc.client.mapresult import AsyncMapResult
from pxgrpc.client.remote import ParallelFunction, RemoteFunction
from pxgrpc.client.targets import Targets
from pxgrpc.client.tasks import Job

if TYPE_CHECKING:
    from pxgrpc.client.client import Client


class View:
    """What direct and load-balanced views share: a client, targets and blocking mode."""

    _default_block = False

    def __init__(self, client: Client, targets: Targets = "all", block: bool | None = None) -> None:
        self.client = client
        self.targets = targets
        self.block = self._default_block if block is None else block
        #: Ids of the tasks submitted through this view, oldest first (see `get_result`).
        self.history: list[str] = []

    def _submit(self, job: Job) -> AsyncResult:
        """Submit through the client, and note the tasks in this view's history."""
        ar = self.client.submit(job)
        self.history.extend(ar.msg_ids)
        if len(self.history) > 2 * self.client.history_limit:
            del self.history[: len(self.history) - self.client.history_limit]
        return ar

    def get_result(
        self, indices_or_msg_ids: Any = None, block: bool | None = None, owner: bool = False
    ) -> AsyncResult:
        """An AsyncResult for tasks of this view: indices into `history` (`-1`, the default, is
        its last task), task ids, AsyncResults, or a list of them (see `Client.get_result`)."""
        jobs = -1 if indices_or_msg_ids is None else indices_or_msg_ids

        def task_id(job: Any) -> Any:
            return self.history[job] if isinstance(job, int) and not isinstance(job, bool) else job

        if isinstance(jobs, list | tuple | set):
            return self.client.get_result([task_id(j) for j in jobs], block)
        return self.client.get_result(task_id(jobs), block)

    def __repr__(self) -> str:
        text = str(self.targets)
        if len(text) > 16:
            text = text[:12] + "...]"
        return f"<{type(self).__name__} {text}>"

    def __len__(self) -> int:
        if isinstance(self.targets, list):
            return len(self.targets)
        if isinstance(self.targets, int):
            return 1
        return len(self.client.ids)

    def _targets(self, targets: Targets = None) -> tuple[list[int], bool]:
        """(engine ids, whether the view is a single engine) for a call."""
        return self.client.resolve_targets(self.targets if targets is None else targets)

    def _block(self, block: bool | None) -> bool:
        return self.block if block is None else block

    def set_flags(self, **flags: Any) -> None:
        """Set view attributes (block, retries, ...) as ipyparallel's set_flags does."""
        for key, value in flags.items():
            if not hasattr(self, key):
                raise KeyError(f"{type(self).__name__} has no flag {key!r}")
            setattr(self, key, value)

    @contextlib.contextmanager
    def temp_flags(self, **flags: Any) -> Iterator[None]:
        """Set flags for the duration of a with-block."""
        saved = {key: getattr(self, key) for key in flags}
        self.set_flags(**flags)
        try:
            yield
        finally:
            self.set_flags(**saved)

    def _finish(self, ar: AsyncResult, block: bool | None) -> Any:
        return ar.get() if self._block(block) else ar

    def apply(self, f: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Call `f(*args, **kwargs)` remotely; the result if `block`, else an AsyncResult."""
        return self._finish(self._apply(f, args, kwargs), None)

    def apply_async(self, f: Callable[..., Any], /, *args: Any, **kwargs: Any) -> AsyncResult:
        """Call `f(*args, **kwargs)` remotely and return an AsyncResult at once."""
        return self._apply(f, args, kwargs)

    def apply_sync(self, f: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Call `f(*args, **kwargs)` remotely and wait for the result."""
        return self._apply(f, args, kwargs).get()

    def _apply(self, f: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]) -> AsyncResult:
        raise NotImplementedError

    def map_async(self, f: Callable[..., Any], *sequences: Sequence[Any], **kwargs: Any) -> AsyncMapResult:
        """`map(f, *sequences)` in parallel; returns an AsyncMapResult at once."""
        return self.map(f, *sequences, block=False, **kwargs)  # type: ignore[no-any-return]

    def map_sync(self, f: Callable[..., Any], *sequences: Sequence[Any], **kwargs: Any) -> list[Any]:
        """`map(f, *sequences)` in parallel; waits and returns the list of results."""
        return self.map(f, *sequences, block=True, **kwargs)  # type: ignore[no-any-return]

    def map(
        self, f: Callable[..., Any], *sequences: Sequence[Any], block: bool | None = None, **kw: Any
    ) -> Any:
        raise NotImplementedError

    def wait(self, jobs: Any = None, timeout: float = -1) -> bool:
        """Wait for this client's outstanding results (or `jobs`)."""
        return self.client.wait(jobs, timeout)

    def abort(self, jobs: Any = None, targets: Targets = None, block: bool | None = None) -> None:
        """Abort queued tasks: `jobs` (AsyncResults or ids), or all queued tasks of the view's engines."""
        if jobs is None:
            self.client.abort(targets=self._targets(targets)[0])
        else:
            self.client.abort(jobs)

    def queue_status(self, targets: Targets = None, verbose: bool = False) -> dict[Any, Any]:
        """The queues of this view's engines (see `Client.queue_status`)."""
        if isinstance(targets, int):
            return self.client.queue_status(targets, verbose)
        return self.client.queue_status(self._targets(targets)[0], verbose)

    def use_cloudpickle(self) -> None:
        """Accepted for ipyparallel code; does nothing. pxgrpc always sends what has no typed
        form (functions, lambdas, closures, class instances) with cloudpickle, here and on the
        engines, so there is nothing to switch on."""

    def use_pickle(self) -> None:
        """Accepted for ipyparallel code; does nothing (see `use_cloudpickle`): pxgrpc keeps
        cloudpickle, which reads and writes everything plain pickle does."""

    def remote(self, block: bool | None = None) -> Callable[[Callable[..., Any]], RemoteFunction]:
        """Decorator: calling the function runs it on this view's engines."""
        return lambda f: RemoteFunction(self, f, block)

    def parallel(self, dist: str = "b", block: bool | None = None) -> Callable[[Callable[..., Any]], Any]:
        """Decorator: calling the function maps it over its arguments across the engines."""
        return lambda f: ParallelFunction(self, f, block)
