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
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pxgrpc.client.errors import CompositeError, PxError, TimeoutError
from pxgrpc.client.executereply import ExecuteReply
from pxgrpc.client.resultmeta import METADATA_KEYS, task_metadata
from pxgrpc.client.tasks import Reducer, TaskOutcome

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
        self._index = {task_id: i for i, task_id in enumerate(self.msg_ids)}
        self._fname = fname
        self._targets = list(targets) if targets is not None else [None] * len(self.msg_ids)
        self._single = single
        self._reduce = reduce
        #: An execute: each task's value is its ExecuteReply.
        self._execute = execute
        #: Elements per task (map): len() and progress count elements, not tasks.
        self._sizes = list(sizes) if sizes is not None else None
        n = len(self.msg_ids)
        self._outcomes: list[TaskOutcome | None] = [None] * n
        self._stdout = [""] * n
        self._stderr = [""] * n
        self._outputs: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        self._data: list[dict[str, Any]] = [{} for _ in range(n)]
        #: Results made of some of these tasks (split, join, get_result) that hear their events.
        self._followers: list[AsyncResult] = []
        self._split: tuple[AsyncResult, ...] | None = None
        self._engine_ids: list[int | None] = list(self._targets)
        self._done = 0
        self._cond = threading.Condition()
        self._submitted = time.time()
        self._completed_at: float | None = None
        self.output_hooks: list[OutputHook] = []
        #: Failed tasks' exceptions in place of their values, instead of raising them.
        self.return_exceptions = return_exceptions
        if n == 0:
            self._finish()

    # --- TaskListener (called from the transport's thread) --------------------------------

    def on_output(self, task_id: str, engine_id: int, stream: str, text: str) -> None:
        i = self._index[task_id]
        with self._cond:
            self._engine_ids[i] = engine_id
            if stream == "stderr":
                self._stderr[i] += text
            else:
                self._stdout[i] += text
            for follower in self._followers:
                if task_id in follower._index:
                    follower.on_output(task_id, engine_id, stream, text)
        for hook in self.output_hooks:
            hook(engine_id, stream, text)

    def on_display(self, task_id: str, engine_id: int, data: dict[str, str], metadata: str) -> None:
        i = self._index[task_id]
        with self._cond:
            self._outputs[i].append({"data": data, "metadata": metadata})
            for follower in self._followers:
                if task_id in follower._index:
                    follower.on_display(task_id, engine_id, data, metadata)
        for hook in self.output_hooks:
            hook(engine_id, "display", data.get("text/plain", ""))

    def on_data(self, task_id: str, engine_id: int, data: dict[str, Any]) -> None:
        i = self._index[task_id]
        with self._cond:
            self._data[i].update(data)
            for follower in self._followers:
                if task_id in follower._index:
                    follower.on_data(task_id, engine_id, data)

    def on_result(self, outcome: TaskOutcome) -> None:
        i = self._index[outcome.task_id]
        with self._cond:
            if self._outcomes[i] is not None:
                return
            self._outcomes[i] = outcome
            if outcome.engine_id >= 0:
                self._engine_ids[i] = outcome.engine_id
            if self._execute and outcome.error is None and not isinstance(outcome.value, ExecuteReply):
                outcome.value = ExecuteReply(outcome.task_id, outcome.execution_count, self._entry(i))
            self._done += 1
            finished = self._done == len(self._outcomes)
            followers = list(self._followers)
            if finished:
                self._followers.clear()  # (nothing more to tell them)
            self._cond.notify_all()
        self._client.task_finished(outcome)
        for follower in followers:
            if outcome.task_id in follower._index:
                follower.on_result(outcome)
        if finished:
            self._finish()

    def follow(self, source: AsyncResult) -> None:
        """Hear the events of `source`'s tasks that are also ours, those past included (how
        split, join and `Client.get_result` build results from results)."""
        with source._cond:
            if source._done < len(source._outcomes):
                source._followers.append(self)
            past = []
            for task_id in self.msg_ids:
                j = source._index.get(task_id)
                if j is None:
                    continue
                i = self._index[task_id]
                self._engine_ids[i] = source._engine_ids[j]
                self._stdout[i], self._stderr[i] = source._stdout[j], source._stderr[j]
                self._outputs[i] = list(source._outputs[j])
                self._data[i] = dict(source._data[j])
                if (outcome := source._outcomes[j]) is not None:
                    past.append(outcome)
        for outcome in past:
            self.on_result(outcome)

    def _finish(self) -> None:
        self._completed_at = time.time()
        errors: list[PxError] = [o.error for o in self._outcomes if o is not None and o.error is not None]
        try:
            if errors and self.return_exceptions:
                self.set_result(self._with_errors())
                return
            if errors:
                if self._single and len(errors) == 1:
                    self.set_exception(errors[0])
                else:
                    self.set_exception(
                        CompositeError(f"one or more exceptions raised in: {self._fname}", errors)
                    )
                return
            values = [o.value for o in self._outcomes if o is not None]
            if self._reduce is not None:
                self.set_result(self._reduce(values))
            else:
                self.set_result(values[0] if self._single else values)
        except concurrent.futures.InvalidStateError:
            pass  # cancelled meanwhile
        except Exception as exc:  # noqa: BLE001 - a failing reduction must reach the waiter
            self.set_exception(exc)

    def _with_errors(self) -> Any:
        """The result with each failed task's exception in place of its value (of its chunk, in
        a map: a joined map then has one exception where the chunk's items would be)."""
        values = [o.error if o.error is not None else o.value for o in self._outcomes if o is not None]
        if self._reduce is None:
            return values[0] if self._single else values
        if not any(isinstance(v, BaseException) for v in values):
            return self._reduce(values)
        flat: list[Any] = []
        for value in values:
            if isinstance(value, BaseException):
                flat.append(value)
            else:
                flat.extend(value)
        return flat

    def task_done(self, task_id: str) -> bool:
        """Whether the task `task_id` (one of `msg_ids`) has finished."""
        return self._outcomes[self._index[task_id]] is not None

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
                if not self.cancelled() and self._done == len(self._outcomes):
                    return self._with_errors()
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
        engine_ids = [self._engine_ids[i] for i in range(len(self.msg_ids))]
        if self._sizes is not None or len(values) != len(engine_ids):
            raise ValueError(f"{self._fname}: a map result has no value per engine; use get()")
        by_engine: dict[int, Any] = {}
        for engine_id, value in zip(engine_ids, values, strict=True):
            if engine_id in by_engine or engine_id is None:
                raise ValueError(
                    f"cannot build a dict: {engine_ids.count(engine_id)} tasks ran on engine {engine_id}"
                )
            by_engine[engine_id] = value
        return by_engine

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
            return self._done
        return sum(n for n, o in zip(self._sizes, self._outcomes, strict=True) if o is not None)

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
        return self._per_task(list(self._stdout))

    @property
    def stderr(self) -> Any:
        return self._per_task(list(self._stderr))

    @property
    def outputs(self) -> Any:
        """Rich display outputs (display()) per engine."""
        return self._per_task([list(o) for o in self._outputs])

    @property
    def engine_id(self) -> Any:
        return self._per_task(list(self._engine_ids))

    @property
    def execute_result(self) -> Any:
        """The Out[] bundle of each engine's execute ({'data': {...}, 'execution_count': n}) or None."""
        results: list[dict[str, Any] | None] = []
        for o in self._outcomes:
            if o is not None and o.execute_result is not None:
                results.append({"data": o.execute_result, "execution_count": o.execution_count})
            else:
                results.append(None)
        return self._per_task(results)

    @property
    def data(self) -> Any:
        """What the tasks published while running (`pxgrpc.datapub.publish_data`): a dict per task."""
        return self._per_task([dict(d) for d in self._data])

    def _entry(self, i: int) -> dict[str, Any]:
        """The metadata of task `i` (with `_cond` held or after it is done)."""
        return task_metadata(
            self.msg_ids[i],
            self._outcomes[i],
            self._submitted,
            engine_id=self._engine_ids[i],
            stdout=self._stdout[i],
            stderr=self._stderr[i],
            outputs=self._outputs[i],
            data=self._data[i],
        )

    @property
    def metadata(self) -> Any:
        """Per-task metadata: engine_id, submitted/started/completed/received datetimes, stdout,
        status, data ... (each key is also an attribute: `ar.engine_id`, `ar.completed`)."""
        with self._cond:
            return self._per_task([self._entry(i) for i in range(len(self.msg_ids))])

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
        return sum(o.completed - o.started for o in self._outcomes if o is not None and o.started)

    @property
    def wall_time(self) -> float:
        """Seconds from the first submission to the last result received (TimeoutError until done)."""
        self._check_ready()
        done = [o for o in self._outcomes if o is not None and o.received]
        if not done:
            return 0.0
        start = min((o.submitted or self._submitted) for o in done)
        return max(o.received for o in done) - start

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
        with self._cond:
            while self._outcomes[i] is None:
                self._cond.wait()
            outcome = self._outcomes[i]
        assert outcome is not None
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
        """Abort the tasks of this result that have not started yet."""
        pending = [self.msg_ids[i] for i, o in enumerate(self._outcomes) if o is None]
        return self._client.abort(pending) if pending else []

    def interrupt(self, sig: int = signal.SIGINT) -> list[int]:
        """Abort this result's queued tasks and raise KeyboardInterrupt in those running.

        The engines stay up and keep their namespaces. Returns the engines interrupted; tasks
        of a load-balanced view whose engine is not known yet are only aborted. With another
        signal than SIGINT the engines running the tasks are sent that signal instead
        (`ar.interrupt(signal.SIGTERM)` ends them, and the tasks fail with `EngineError`).
        """
        try:
            signal.Signals(sig)
        except ValueError:
            raise ValueError(f"sig: {sig!r} is not a signal on this platform") from None
        pending = [i for i, o in enumerate(self._outcomes) if o is None]
        engines = sorted({e for i in pending if (e := self._engine_ids[i]) is not None})
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
