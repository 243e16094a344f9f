"""TaskEvents: what one AsyncResult has heard of each of its tasks so far.

The transport's thread reports output, displays, published data and outcomes; each AsyncResult
keeps them per task in a `TaskEvents` and passes them on to the results made of some of its tasks
(split, join, `Client.get_result`: its *followers*). The AsyncResult assembles the final value.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pxgrpc.client.errors import CompositeError, PxError
from pxgrpc.client.executereply import ExecuteReply
from pxgrpc.client.resultmeta import task_metadata
from pxgrpc.client.tasks import Reducer, TaskOutcome

if TYPE_CHECKING:
    from pxgrpc.client.asyncresult import AsyncResult


class TaskEvents:
    """Per task (in `task_ids` order): stdout, stderr, rich outputs, published data, the engine
    it ran on and its outcome, under one condition that waiters wait on.

    `execute`: the tasks are executes, and each one's value becomes its `ExecuteReply`.
    """

    def __init__(
        self, task_ids: Sequence[str], targets: Sequence[int | None], submitted: float, execute: bool = False
    ) -> None:
        self.task_ids = list(task_ids)
        self.index = {task_id: i for i, task_id in enumerate(self.task_ids)}
        self.submitted = submitted
        self.execute = execute
        n = len(self.task_ids)
        self.outcomes: list[TaskOutcome | None] = [None] * n
        self.stdout = [""] * n
        self.stderr = [""] * n
        self.outputs: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        self.data: list[dict[str, Any]] = [{} for _ in range(n)]
        self.engine_ids: list[int | None] = list(targets)
        self.done = 0
        #: The most bytes of blobs one task's value came in (0: all small, inline).
        self.largest_blobs = 0
        #: Guards the events; `wait` (with it held) waits for the next outcome.
        self.lock = threading.RLock()
        self._cond = threading.Condition(self.lock)
        self._waiters = 0
        #: Results made of some of these tasks (split, join, get_result) that hear their events.
        self.followers: list[AsyncResult] = []

    def wait(self) -> None:
        """(With `lock` held.) Wait until the next outcome comes."""
        self._waiters += 1
        try:
            self._cond.wait()
        finally:
            self._waiters -= 1

    def _followers_of(self, task_id: str) -> list[AsyncResult]:
        return [f for f in self.followers if task_id in f._events.index]

    # --- events (called from the transport's thread) --------------------------------------

    def add_output(self, task_id: str, engine_id: int, stream: str, text: str) -> None:
        i = self.index[task_id]
        with self.lock:
            self.engine_ids[i] = engine_id
            if stream == "stderr":
                self.stderr[i] += text
            else:
                self.stdout[i] += text
            for follower in self._followers_of(task_id):
                follower.on_output(task_id, engine_id, stream, text)

    def add_display(self, task_id: str, engine_id: int, data: dict[str, str], metadata: str) -> None:
        i = self.index[task_id]
        with self.lock:
            self.outputs[i].append({"data": data, "metadata": metadata})
            for follower in self._followers_of(task_id):
                follower.on_display(task_id, engine_id, data, metadata)

    def add_data(self, task_id: str, engine_id: int, data: dict[str, Any]) -> None:
        i = self.index[task_id]
        with self.lock:
            self.data[i].update(data)
            for follower in self._followers_of(task_id):
                follower.on_data(task_id, engine_id, data)

    def add_outcome(self, outcome: TaskOutcome) -> tuple[bool, list[AsyncResult]] | None:
        """Record a task's outcome; None if it already had one, else (whether every task has
        finished now, the followers to tell)."""
        i = self.index[outcome.task_id]
        with self.lock:
            if self.outcomes[i] is not None:
                return None
            self.outcomes[i] = outcome
            if outcome.blob_bytes > self.largest_blobs:
                self.largest_blobs = outcome.blob_bytes
            if outcome.engine_id >= 0:
                self.engine_ids[i] = outcome.engine_id
            if self.execute and outcome.error is None and not isinstance(outcome.value, ExecuteReply):
                entry = functools.partial(self.entry, i)  # (made when read, once the task is done)
                outcome.value = ExecuteReply(outcome.task_id, outcome.execution_count, entry)
            self.done += 1
            finished = self.done == len(self.outcomes)
            followers = list(self.followers)
            if finished:
                self.followers.clear()  # (nothing more to tell them)
            if self._waiters:
                self._cond.notify_all()
        if not followers:
            return finished, []
        return finished, [f for f in followers if outcome.task_id in f._events.index]

    def copy_from(self, source: TaskEvents, follower: AsyncResult) -> list[TaskOutcome]:
        """Take what `source` heard of our tasks so far, and have it tell `follower` (whose
        events these are) the rest; returns the outcomes already in."""
        with source.lock:
            if source.done < len(source.outcomes):
                source.followers.append(follower)
            past = []
            for task_id in self.task_ids:
                j = source.index.get(task_id)
                if j is None:
                    continue
                i = self.index[task_id]
                self.engine_ids[i] = source.engine_ids[j]
                self.stdout[i], self.stderr[i] = source.stdout[j], source.stderr[j]
                self.outputs[i] = list(source.outputs[j])
                self.data[i] = dict(source.data[j])
                if (outcome := source.outcomes[j]) is not None:
                    past.append(outcome)
        return past

    # --- reading ----------------------------------------------------------------------------

    def outcome(self, i: int) -> TaskOutcome:
        """Task `i`'s outcome, waiting for it."""
        with self.lock:
            while self.outcomes[i] is None:
                self.wait()
            outcome = self.outcomes[i]
        assert outcome is not None
        return outcome

    def pending(self) -> list[int]:
        """The indices of the tasks that have not finished."""
        return [i for i, o in enumerate(self.outcomes) if o is None]

    def entry(self, i: int) -> dict[str, Any]:
        """The metadata of task `i` (with `cond` held or after it is done)."""
        return task_metadata(
            self.task_ids[i],
            self.outcomes[i],
            self.submitted,
            engine_id=self.engine_ids[i],
            stdout=self.stdout[i],
            stderr=self.stderr[i],
            outputs=self.outputs[i],
            data=self.data[i],
        )

    def metadata(self) -> list[dict[str, Any]]:
        """Every task's metadata."""
        with self.lock:
            return [self.entry(i) for i in range(len(self.task_ids))]

    def execute_results(self) -> list[dict[str, Any] | None]:
        """The Out[] bundle of each task's execute ({'data': {...}, 'execution_count': n}) or None."""
        results: list[dict[str, Any] | None] = []
        for o in self.outcomes:
            if o is not None and o.execute_result is not None:
                results.append({"data": o.execute_result, "execution_count": o.execution_count})
            else:
                results.append(None)
        return results

    def serial_time(self) -> float:
        """Seconds the engines spent computing, summed."""
        return sum(o.completed - o.started for o in self.outcomes if o is not None and o.started)

    def wall_time(self) -> float:
        """Seconds from the first submission to the last result received."""
        done = [o for o in self.outcomes if o is not None and o.received]
        if not done:
            return 0.0
        start = min((o.submitted or self.submitted) for o in done)
        return max(o.received for o in done) - start


# --- how the value is assembled from the outcomes ---------------------------------------

Outcomes = Sequence[TaskOutcome | None]


def failures(outcomes: Outcomes) -> list[PxError]:
    """The errors of the failed tasks, in task order."""
    return [o.error for o in outcomes if o is not None and o.error is not None]


def raised_error(fname: str, errors: list[PxError], single: bool) -> PxError:
    """What waiting raises when tasks failed: a single task's own error, else a CompositeError."""
    if single and len(errors) == 1:
        return errors[0]
    return CompositeError(f"one or more exceptions raised in: {fname}", errors)


def result_value(outcomes: Outcomes, single: bool, reduce: Reducer | None) -> Any:
    """The value of tasks that all succeeded: one value (`single`), the list, or its reduction."""
    values = [o.value for o in outcomes if o is not None]
    if reduce is not None:
        return reduce(values)
    return values[0] if single else values


def value_with_errors(outcomes: Outcomes, single: bool, reduce: Reducer | None) -> Any:
    """The value with each failed task's exception in place of its value (of its chunk, in a
    map: a joined map then has one exception where the chunk's items would be)."""
    values = [o.error if o.error is not None else o.value for o in outcomes if o is not None]
    if reduce is None:
        return values[0] if single else values
    if not any(isinstance(v, BaseException) for v in values):
        return reduce(values)
    flat: list[Any] = []
    for value in values:
        if isinstance(value, BaseException):
            flat.append(value)
        else:
            flat.extend(value)
    return flat


def values_by_engine(fname: str, engine_ids: Sequence[int | None], values: list[Any]) -> dict[int, Any]:
    """`values` keyed by the engine each task ran on (ValueError if one engine ran several)."""
    if len(values) != len(engine_ids):
        raise ValueError(f"{fname}: a map result has no value per engine; use get()")
    by_engine: dict[int, Any] = {}
    for engine_id, value in zip(engine_ids, values, strict=True):
        if engine_id in by_engine or engine_id is None:
            raise ValueError(
                f"cannot build a dict: {list(engine_ids).count(engine_id)} tasks ran on engine {engine_id}"
            )
        by_engine[engine_id] = value
    return by_engine
