"""AsyncResult: the future every non-blocking call returns.

It is a `concurrent.futures.Future` (so `result()`, `add_done_callback()`, `as_completed()` and
`wait()` from the standard library work), it is awaitable from asyncio, and it has
ipyparallel's interface: `get`, `wait`, `ready`, `successful`, `stdout`, `metadata`, ...
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import signal
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pxgrpc.client.errors import PxError, TimeoutError
from pxgrpc.client.resultmeta import METADATA_KEYS
from pxgrpc.client.taskevents import (
    TaskEvents,
    failures,
    raised_error,
    result_value,
    value_with_errors,
    values_by_engine,
)
from pxgrpc.client.tasks import Reducer, TaskOutcome
from pxgrpc.signals import parse_signal

if TYPE_CHECKING:
    from pxgrpc.client.client import Client

log = logging.getLogger(__name__)

#: Seconds IPython's display of a pending AsyncResult waits for it to finish.
DISPLAY_GRACE = 0.05
OutputHook = Callable[[int, str, str], None]


class AsyncResult(concurrent.futures.Future[Any]):
    """The pending outcome of one call on one or several engines.

    >>> ar = dv.apply_async(os.getpid)
    >>> ar.get(timeout=5)          # block; a list in engine order for a multi-engine view
    >>> await ar                   # or from asyncio
    """

    def __init__(
        self,
        client: Client,
        task_ids: Sequence[str],
        fname: str,
        targets: Sequence[int | None] | None = None,
        single: bool = False,
        reduce: Reducer | None = None,
        return_exceptions: bool = False,
        execute: bool = False,
        sizes: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self._client = client
        self.msg_ids = list(task_ids)
        self._fname = fname
        self._targets = list(targets) if targets is not None else [None] * len(self.msg_ids)
        self._single = single
        self._reduce = reduce
        #: Elements per task (map): len() and progress count elements, not tasks.
        self._sizes = list(sizes) if sizes is not None else None
        self._submitted = time.time()
        #: What has been heard of each task (an execute's values become ExecuteReplys there).
        self._events = TaskEvents(self.msg_ids, self._targets, self._submitted, execute)
        self._split: tuple[AsyncResult, ...] | None = None
        self._completed_at: float | None = None
        self.output_hooks: list[OutputHook] = []
        #: Failed tasks' exceptions in place of their values, instead of raising them.
        self.return_exceptions = return_exceptions
        if not self.msg_ids:
            self._finish()

    # --- TaskListener (called from the transport's thread) --------------------------------

    def on_output(self, task_id: str, engine_id: int, stream: str, text: str) -> None:
        self._events.add_output(task_id, engine_id, stream, text)
        for hook in self.output_hooks:
            hook(engine_id, stream, text)

    def on_display(self, task_id: str, engine_id: int, data: dict[str, str], metadata: str) -> None:
        self._events.add_display(task_id, engine_id, data, metadata)
        for hook in self.output_hooks:
            hook(engine_id, "display", data.get("text/plain", ""))

    def on_data(self, task_id: str, engine_id: int, data: dict[str, Any]) -> None:
        self._events.add_data(task_id, engine_id, data)

    def on_result(self, outcome: TaskOutcome) -> None:
        recorded = self._events.add_outcome(outcome)
        if recorded is None:
            return
        finished, followers = recorded
        self._client.task_finished(outcome)
        for follower in followers:
            follower.on_result(outcome)
        if finished:
            self._finish()

    def follow(self, source: AsyncResult) -> None:
        """Hear the events of `source`'s tasks that are also ours, those past included (how
        split, join and `Client.get_result` build results from results)."""
        for outcome in self._events.copy_from(source._events, self):
            self.on_result(outcome)

    def _finish(self) -> None:
        self._completed_at = time.time()
        outcomes = self._events.outcomes
        errors = failures(outcomes)
        try:
            if errors and self.return_exceptions:
                self.set_result(value_with_errors(outcomes, self._single, self._reduce))
            elif errors:
                self.set_exception(raised_error(self._fname, errors, self._single))
            else:
                self.set_result(result_value(outcomes, self._single, self._reduce))
        except concurrent.futures.InvalidStateError:
            pass  # cancelled meanwhile
        except Exception as exc:  # noqa: BLE001 - a failing reduction must reach the waiter
            self.set_exception(exc)

    def task_done(self, task_id: str) -> bool:
        """Whether the task `task_id` (one of `msg_ids`) has finished."""
        return self._events.outcomes[self._events.index[task_id]] is not None

    # --- ipyparallel's interface ----------------------------------------------------------

    def get(self, timeout: float | None = None, return_exceptions: bool | None = None) -> Any:
        """Wait for the result (at most `timeout` seconds) and return it, or raise its error.

        `return_exceptions=True`: failed tasks' exceptions come back in place of their values
        instead of being raised. Ctrl-C (or a Jupyter kernel interrupt) while waiting interrupts
        this result's tasks on the engines (see `interrupt`) and stops waiting.
        """
        try:
            if return_exceptions and not self.return_exceptions:
                self.exception(timeout if timeout is None or timeout >= 0 else None)
                if not self.cancelled() and self._events.done == len(self.msg_ids):
                    return value_with_errors(self._events.outcomes, self._single, self._reduce)
            return self.result(timeout if timeout is None or timeout >= 0 else None)
        except KeyboardInterrupt:
            self.interrupt()
            raise
        except concurrent.futures.TimeoutError:
            raise TimeoutError(
                f"{self._fname}: {self.progress} of {len(self)} tasks done after {timeout} s; the rest go on "
                "(call .get() again to keep waiting, or .abort())"
            ) from None

    def wait(self, timeout: float | None = None, return_when: str | None = None) -> Any:
        """Wait until done (or `timeout` seconds); return whether it is done.

        With `return_when` (`pxgrpc.FIRST_COMPLETED`, `FIRST_EXCEPTION` or `ALL_COMPLETED`) it
        waits as `concurrent.futures.wait` does on the tasks one by one (see `split`) and returns
        their `(done, pending)` sets.
        """
        wait_for = timeout if timeout is None or timeout >= 0 else None
        if return_when is None:
            concurrent.futures.wait([self], wait_for)
            return self.done()
        done, pending = concurrent.futures.wait(self.split(), wait_for, return_when=return_when)
        return done, pending

    def wait_for_output(self, timeout: float = -1) -> bool:
        """Wait until all output of the tasks is in; return whether it is.

        Output travels ahead of each task's result on the same stream, so it is complete as soon
        as the result is: this is `wait` (kept for ipyparallel code).
        """
        return bool(self.wait(timeout))

    def get_dict(self, timeout: float = -1) -> dict[int, Any]:
        """The results keyed by engine id (ValueError if one engine ran several of the tasks)."""
        results = self.get(timeout)
        values = [results] if self._single else list(results)
        if self._sizes is not None:
            raise ValueError(f"{self._fname}: a map result has no value per engine; use get()")
        return values_by_engine(self._fname, self._events.engine_ids, values)

    @property
    def r(self) -> Any:
        """The result (waits): `get()` as a property."""
        return self.get()

    def split(self) -> tuple[AsyncResult, ...]:
        """One AsyncResult per task (for `concurrent.futures.wait` and friends); `join` undoes it."""
        if len(self.msg_ids) == 1:
            return (self,)
        if self._split is None:
            flatten = self._reduce is None
            parts = []
            for task_id, target in zip(self.msg_ids, self._targets, strict=True):
                part = AsyncResult(self._client, [task_id], self._fname, [target], single=flatten)
                part.follow(self)
                parts.append(part)
            self._split = tuple(parts)
        return self._split

    @classmethod
    def join(cls, *results: AsyncResult) -> AsyncResult:
        """One AsyncResult for the tasks of several (the inverse of `split`)."""
        if not results:
            raise ValueError("join needs at least one AsyncResult")
        if len(results) == 1:
            return results[0]
        first = results[0]
        ids = [task_id for ar in results for task_id in ar.msg_ids]
        targets = [t for ar in results for t in ar._targets]
        joined = AsyncResult(first._client, ids, first._fname, targets)
        for ar in results:
            joined.follow(ar)
        return joined

    def ready(self) -> bool:
        """Whether every task has finished."""
        return self.done()

    def successful(self) -> bool:
        """Whether every task finished without error (only meaningful once ready)."""
        if not self.done():
            raise AssertionError(f"{self._fname}: not ready yet")
        return not self.cancelled() and self.exception() is None

    @property
    def progress(self) -> int:
        """How many tasks have finished (for a map: how many elements)."""
        if self._sizes is None:
            return self._events.done
        return sum(n for n, o in zip(self._sizes, self._events.outcomes, strict=True) if o is not None)

    @property
    def elapsed(self) -> float:
        """Seconds since submission (until completion, once done)."""
        end = self._completed_at if self._completed_at is not None else time.time()
        return end - self._submitted

    def _per_task(self, values: list[Any]) -> Any:
        return values[0] if self._single else values

    @property
    def stdout(self) -> Any:
        """What the tasks printed to stdout (one string per engine, or one string)."""
        return self._per_task(list(self._events.stdout))

    @property
    def stderr(self) -> Any:
        return self._per_task(list(self._events.stderr))

    @property
    def outputs(self) -> Any:
        """Rich display outputs (display()) per engine."""
        return self._per_task([list(o) for o in self._events.outputs])

    @property
    def engine_id(self) -> Any:
        return self._per_task(list(self._events.engine_ids))

    @property
    def execute_result(self) -> Any:
        """The Out[] bundle of each engine's execute ({'data': {...}, 'execution_count': n}) or None."""
        return self._per_task(self._events.execute_results())

    @property
    def data(self) -> Any:
        """What the tasks published while running (`pxgrpc.datapub.publish_data`): a dict per task."""
        return self._per_task([dict(d) for d in self._events.data])

    @property
    def metadata(self) -> Any:
        """Per-task metadata: engine_id, submitted/started/completed/received datetimes, stdout,
        status, data ... (each key is also an attribute: `ar.engine_id`, `ar.completed`)."""
        return self._per_task(self._events.metadata())

    def __getattr__(self, key: str) -> Any:
        # Only reached for names that are not attributes: metadata keys, as in ipyparallel.
        if key.startswith("_") or key not in METADATA_KEYS:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}")
        return self[key]

    def _check_ready(self) -> None:
        if not self.done():
            raise TimeoutError(f"{self._fname}: not ready yet ({self.progress} of {len(self)} done)")

    @property
    def serial_time(self) -> float:
        """Seconds the engines spent computing, summed (TimeoutError until done)."""
        self._check_ready()
        return self._events.serial_time()

    @property
    def wall_time(self) -> float:
        """Seconds from the first submission to the last result received (TimeoutError until done)."""
        self._check_ready()
        return self._events.wall_time()

    def __len__(self) -> int:
        """How many tasks (for a map: how many elements)."""
        return len(self.msg_ids) if self._sizes is None else sum(self._sizes)

    def __iter__(self) -> Iterator[Any]:
        """The results one by one, in order, each as soon as it is in."""
        if self._single:
            yield from self.get()
            return
        for i in range(len(self.msg_ids)):
            yield self._result_at(i)

    def _result_at(self, i: int) -> Any:
        outcome = self._events.outcome(i)
        if outcome.error is not None:
            if self.return_exceptions:
                return outcome.error
            raise outcome.error
        return outcome.value

    def __getitem__(self, key: int | slice | str) -> Any:
        if isinstance(key, str):
            meta = self.metadata
            return meta[key] if self._single else [m[key] for m in meta]
        self.wait()
        return self.get()[key]

    def __repr__(self) -> str:
        if self.done():
            state = "finished" if not self.cancelled() and self.exception() is None else "failed"
        else:
            state = "pending"
        return f"<{type(self).__name__}: {self._fname}:{state}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        # IPython shows a cell's value the instant the cell ends; give quick work (a scatter of a
        # few thousand items) a moment to finish so the repr says what users will see next.
        self.wait(DISPLAY_GRACE)
        printer.text(repr(self))

    def __await__(self) -> Generator[Any, None, Any]:
        return asyncio.wrap_future(self).__await__()

    def abort(self) -> list[str]:
        """Abort the tasks of this result that have not started yet; the ids the controller
        dropped at once (a task sent straight to its engine a moment ago is dropped as soon as
        the controller hears of it, without being listed)."""
        pending = [self.msg_ids[i] for i in self._events.pending()]
        return self._client.abort(pending) if pending else []

    def interrupt(self, sig: int = signal.SIGINT) -> list[int]:
        """Abort this result's queued tasks and raise KeyboardInterrupt in those running.

        The engines stay up and keep their namespaces. Returns the engines interrupted; tasks
        of a load-balanced view whose engine is not known yet are only aborted. With another
        signal than SIGINT the engines running the tasks are sent that signal instead
        (`ar.interrupt(signal.SIGTERM)` ends them, and the tasks fail with `EngineError`).
        """
        try:
            parse_signal(sig)
        except ValueError as exc:
            raise ValueError(f"sig: {exc}") from None
        pending = self._events.pending()
        engines = sorted({e for i in pending if (e := self._events.engine_ids[i]) is not None})
        if not pending:
            return []
        try:
            self.abort()
            return self._client.interrupt(engines, sig) if engines else []
        except PxError as exc:
            log.warning("%s: could not interrupt the engines: %s", self._fname, exc)
            return []

    def cancel(self) -> bool:
        """Abort the tasks that have not started and stop waiting for the rest."""
        if self.done():
            return False
        self.abort()
        return super().cancel()

    def wait_interactive(
        self, interval: float = 0.1, timeout: float = -1, widget: bool | None = None
    ) -> None:
        """Wait with a progress bar (tqdm; a notebook widget in Jupyter)."""
        from pxgrpc.client.frontend import progress_bar

        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        with progress_bar(total=len(self), desc=self._fname, widget=widget) as bar:
            while not self.done():
                if deadline is not None and time.monotonic() > deadline:
                    break
                self.wait(interval)
                bar.update(self.progress - bar.n)
            bar.update(self.progress - bar.n)

    def display_outputs(self, groupby: str = "type", result_only: bool = False) -> None:
        """Show what the engines printed (`[stdout:N]` blocks), displayed and returned (`Out[N:n]:`).

        `groupby` is "type", "engine" or "order" (see `pxgrpc.ipython.display.display_outputs`).
        A single-engine result (`rc[0]`) prints its output without `[stdout:N]` headers.
        """
        from pxgrpc.client.frontend import display_outputs

        display_outputs(self, groupby, result_only, headers=not self._single)
