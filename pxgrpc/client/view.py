"""Views: a set of engines and the ways to run work on them.

`View` (here) is what all views share: a client, targets, blocking mode, history. `DirectView`
(here) runs every call on every engine of the view (`rc[:]`, `rc[0]`, `rc[::2]`);
`LoadBalancedView` (`pxgrpc.client.balanced`) runs each task once, on whichever engine is least
busy.
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

import builtins
import functools

from pxgrpc.client.errors import NoEnginesError
from pxgrpc.client.tasks import Action, Apply, Execute, Pull, Push
from pxgrpc.partition import join_parts, map_chunk, partition, partition_bounds

__all__ = ["DirectView", "Targets", "View"]


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


class DirectView(View):
    """Every call runs on every engine of the view, in the order calls were made.

    >>> dv = rc[:]
    >>> dv.execute("import os")
    >>> dv.apply_sync(os.getpid)      # one pid per engine
    """

    def _apply(self, f: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]) -> AsyncResult:
        ids, single = self._targets()
        name = getattr(f, "__name__", "apply")
        return self._submit(Job(name, ids, Apply(f, args, kwargs), single=single))

    def execute(
        self, code: str, silent: bool = True, targets: Targets = None, block: bool | None = None
    ) -> AsyncResult:
        """Run `code` on the engines. Returns the AsyncResult (after waiting, if blocking)."""
        ids, single = self._targets(targets)
        ar = self._submit(Job("execute", ids, Execute(code, silent), single=single))
        if self._block(block):
            with contextlib.suppress(KeyboardInterrupt):
                ar.get()
        return ar

    def run(self, filename: str, targets: Targets = None, block: bool | None = None) -> AsyncResult:
        """Execute the contents of a local file on the engines."""
        with builtins.open(filename, encoding="utf-8") as f:
            code = f.read()
        return self.execute(code, targets=targets, block=block)

    def push(self, ns: dict[str, Any], targets: Targets = None, block: bool | None = None) -> Any:
        """Assign the variables of `ns` on every engine."""
        if not isinstance(ns, dict):
            raise TypeError(f"push takes a dict of names to values, not {type(ns).__name__}")
        for name in ns:
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"push: {name!r} is not a valid variable name")
        ids, single = self._targets(targets)
        return self._finish(self._submit(Job("push", ids, Push(dict(ns)), single=single)), block)

    def update(self, ns: dict[str, Any]) -> Any:
        """Push `ns` (dict-like interface)."""
        return self.push(ns)

    def pull(self, names: str | Sequence[str], targets: Targets = None, block: bool | None = None) -> Any:
        """Read variables: one name gives its value, a list of names a list of values (per engine)."""
        single_name = isinstance(names, str)
        name_list = [names] if isinstance(names, str) else list(names)
        ids, single = self._targets(targets)
        pull = Pull(name_list, single_name)
        return self._finish(self._submit(Job("pull", ids, pull, single=single)), block)

    def get(self, key: str) -> Any:
        return self.pull(key, block=True)

    def __getitem__(self, key: str) -> Any:
        if not isinstance(key, str):
            raise TypeError(f"DirectView[...] takes a variable name, not {type(key).__name__}")
        return self.get(key)

    def __setitem__(self, key: str, value: Any) -> None:
        self.push({key: value}, block=True)

    def scatter(
        self,
        key: str,
        seq: Sequence[Any],
        dist: str = "b",
        flatten: bool = False,
        targets: Targets = None,
        block: bool | None = None,
    ) -> AsyncResult | None:
        """Split `seq` into contiguous parts, one per engine (the first len % n get one more).

        Returns an AsyncResult, or None after waiting if blocking (as ipyparallel does).
        """
        if dist != "b":
            raise ValueError(f"scatter: only dist='b' (contiguous blocks) is supported, not {dist!r}")
        ids, _ = self._targets(targets)
        if not ids:
            raise NoEnginesError("scatter: the view has no engines")
        bounds = partition_bounds(len(seq), len(ids))

        def pushes() -> Iterator[Action]:
            # Each part is cut when its turn comes: the first engine starts on its part sooner.
            for start, stop in bounds:
                part = seq[start:stop]
                yield Push({key: part[0] if flatten and len(part) == 1 else part})

        ar = self._submit(Job("scatter", ids, each=pushes()))
        if self._block(block):
            ar.wait()
            return None
        return ar

    def gather(self, key: str, dist: str = "b", targets: Targets = None, block: bool | None = None) -> Any:
        """Pull `key` from every engine and join the parts in engine order."""
        if dist != "b":
            raise ValueError(f"gather: only dist='b' (contiguous blocks) is supported, not {dist!r}")
        ids, _ = self._targets(targets)
        ar = self._submit(Job("gather", ids, Pull([key], single=True), join=join_parts, assemble=True))
        return self._finish(ar, block)

    def map(
        self,
        f: Callable[..., Any],
        *sequences: Sequence[Any],
        block: bool | None = None,
        return_exceptions: bool = False,
        **kw: Any,
    ) -> Any:
        """`map(f, *sequences)` with the sequences split in contiguous parts across the engines.

        Sequences without `len()` (iterators, generators) are read into lists first.
        `return_exceptions`: a failed part's exception in place of its items, instead of raising.
        """
        if kw:
            raise TypeError(f"DirectView.map: unexpected arguments {sorted(kw)}")
        if not sequences:
            raise TypeError("map needs at least one sequence")
        sequences = tuple(s if hasattr(s, "__len__") else list(s) for s in sequences)
        ids, _ = self._targets()
        length = min(len(s) for s in sequences)
        parts = [
            partition(list(s[:length]) if not hasattr(s, "shape") else s[:length], len(ids))
            for s in sequences
        ]
        mapper = functools.partial(map_chunk, f)
        applies = [Apply(mapper, [p[i] for p in parts]) for i in range(len(ids))]
        name = getattr(f, "__name__", "map")
        sizes = [len(part) for part in parts[0]]
        job = Job(name, ids, each=applies, join=join_parts, sizes=sizes, return_exceptions=return_exceptions)
        return self._finish(self._submit(job), block)

    def clear(self, targets: Targets = None, block: bool | None = None) -> AsyncResult | None:
        """Delete the user's variables on this view's engines (see `Client.clear`)."""
        return self.client.clear(self._targets(targets)[0], self._block(block))

    @property
    def importer(self) -> contextlib.AbstractContextManager[None]:
        """`with dv.importer: import numpy` imports here and on the engines (`sync_imports()`)."""
        return self.sync_imports(True)

    @contextlib.contextmanager
    def sync_imports(self, local: bool = True, quiet: bool = False) -> Iterator[None]:
        """Imports inside this with-block also happen on every engine.

        >>> with dv.sync_imports():
        ...     import numpy
        """
        real_import = builtins.__import__
        view = self

        def remote_import(
            name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0
        ) -> Any:
            if level == 0:
                if fromlist:
                    names = ", ".join(fromlist)
                    code = f"from {name} import {names}"
                    if not quiet:
                        print(f"from {name} import {names} on engine(s)")
                else:
                    code = f"import {name}"
                    if not quiet:
                        print(f"importing {name} on engine(s)")
                view.execute(code, block=True).get()
            if local:
                return real_import(name, globals, locals, fromlist, level)
            return None

        builtins.__import__ = remote_import
        try:
            yield
        finally:
            builtins.__import__ = real_import

    def activate(self, suffix: str = "") -> None:
        """Make %px / %%px (and %px{suffix}) run on this view."""
        from pxgrpc.client.frontend import activate

        activate(self, suffix)
