"""The client's dependency scheduler: load-balanced tasks held until their dependencies are met.

The client knows where and how each of its own tasks ran, so dependencies between its tasks
are resolved here, before anything reaches the controller: a task with `after=` waits until the
tasks it names are done; one with `follow=` then goes to the engine where they ran. A task whose
dependencies can never be met (one failed, its engine is gone, an unknown task id) fails at once
with `ImpossibleDependency` / `InvalidDependency`; one still waiting after its `timeout` fails
with `DependencyTimeout`. Tasks of `@require`/`@depend` functions that an engine turns down
(`UnmetDependency` there) go to the next engine not yet tried, until none is left.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pxgrpc.client.errors import (
    DependencyTimeout,
    ImpossibleDependency,
    InvalidDependency,
    PxError,
    TaskAborted,
)
from pxgrpc.client.tasks import Action, Constraints, Job, TaskListener, TaskOutcome
from pxgrpc.dependency import Dependency

log = logging.getLogger(__name__)

SubmitFn = Callable[[Sequence[str], Job, TaskListener], None]


def as_dependency(value: Any) -> Dependency:
    """A Dependency from what `after=`/`follow=` accept: None, task ids, AsyncResults, a Dependency."""
    if isinstance(value, Dependency):
        return value
    return Dependency(value)


def dependency_timeout(value: Any) -> float | None:
    """A view's `timeout` flag checked: seconds >= 0, or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"timeout must be a number of seconds >= 0 (or None), not {value!r}")
    return float(value)


@dataclass(eq=False)
class _Held:
    ids: list[str]
    actions: list[Action]
    job: Job
    listener: TaskListener
    constraints: Constraints
    settled: bool = False
    timer: threading.Timer | None = None


class DependencyScheduler:
    """Holds the jobs of one client that wait on other tasks, and records how its tasks ended.

    `submit`, `new_ids`, `engines` and `pending` are the client's: hand tasks to the transport,
    fresh task ids, the live engines, the ids of the client's unfinished tasks.
    """

    def __init__(
        self,
        submit: SubmitFn,
        new_ids: Callable[[int], list[str]],
        engines: Callable[[], list[int]],
        pending: Callable[[], set[str]],
    ) -> None:
        self._submit = submit
        self._new_ids = new_ids
        self._engines = engines
        self._pending = pending
        self._lock = threading.Lock()
        self._succeeded: dict[str, int] = {}  # task id -> the engine it ran on
        self._failed: dict[str, int] = {}
        self._waiting: dict[str, list[_Held]] = {}  # task id -> the jobs waiting for it
        self._held: dict[str, _Held] = {}  # task id -> its job, until it is sent or fails
        self._sender: concurrent.futures.ThreadPoolExecutor | None = None
        self._closed: PxError | None = None

    # --- what the client calls ------------------------------------------------------------

    def record(self, task_id: str, engine_id: int, ok: bool) -> None:
        """A task of this client finished (called for every task, from the transport's thread)."""
        with self._lock:
            (self._succeeded if ok else self._failed)[task_id] = engine_id
            woken = self._waiting.pop(task_id, None)
        for held in woken or ():
            self._evaluate(held)

    def hold(self, ids: Sequence[str], job: Job, listener: TaskListener) -> None:
        """Send `job` (as tasks `ids`) once its constraints allow, or fail it if they never will."""
        constraints = job.constraints or Constraints()
        if job.each is not None:
            actions = list(job.each)
        elif job.action is not None:
            actions = [job.action] * len(ids)
        else:
            raise ValueError(f"{job.name}: a job needs an action, or one action per target")
        held = _Held(list(ids), actions, job, listener, constraints)
        wanted = constraints.after | constraints.follow
        with self._lock:
            known = self._succeeded.keys() | self._failed.keys()
        unknown = sorted(wanted - known - self._pending())
        if unknown:
            self._settle(held)
            self._fail(
                held, InvalidDependency(f"{job.name}: no task {unknown[0]!r} was submitted by this client")
            )
            return
        with self._lock:
            for task_id in held.ids:
                self._held[task_id] = held
        if (
            constraints.timeout is not None
            and constraints.timeout > 0
            and (constraints.after or constraints.follow)
        ):
            held.timer = threading.Timer(constraints.timeout, self._time_out, (held,))
            held.timer.daemon = True
            held.timer.start()
        self._evaluate(held)

    def abort(self, task_ids: Sequence[str]) -> list[str]:
        """Drop the held jobs with any of these tasks (they fail with TaskAborted); their ids."""
        with self._lock:
            jobs = {id(h): h for t in task_ids if (h := self._held.get(t)) is not None and not h.settled}
            for held in jobs.values():
                self._settle_locked(held)
        aborted: list[str] = []
        for held in jobs.values():
            self._fail(held, TaskAborted(f"{held.job.name}: aborted while waiting for its dependencies"))
            aborted.extend(held.ids)
        return aborted

    def close(self, error: PxError) -> None:
        """The client is closing: the jobs still held fail with `error`."""
        with self._lock:
            self._closed = error
            jobs = {id(h): h for h in self._held.values() if not h.settled}
            for held in jobs.values():
                self._settle_locked(held)
            self._waiting.clear()
        for held in jobs.values():
            self._fail(held, error)
        if self._sender is not None:
            self._sender.shutdown(wait=False)

    # --- deciding ---------------------------------------------------------------------------

    def _evaluate(self, held: _Held) -> None:
        with self._lock:
            if held.settled:
                return
            verdict = self._verdict(held)
            if isinstance(verdict, list):  # still waiting for these tasks
                for task_id in verdict:
                    self._waiting.setdefault(task_id, []).append(held)
                return
            self._settle_locked(held)
        if isinstance(verdict, PxError):
            self._fail(held, verdict)
        else:
            self._send(held, verdict)

    def _verdict(self, held: _Held) -> list[str] | PxError | tuple[int, ...]:
        """(Lock held.) The tasks still to wait for, the error that ends the job, or the engines
        it may run on (empty: any, load-balanced)."""
        c, name = held.constraints, held.job.name
        done, failed = self._succeeded, self._failed
        for kind, dep in (("after", c.after), ("follow", c.follow)):
            if dep.unreachable(done, failed):
                outcome = "failed" if any(t in failed for t in dep) else "succeeded"
                return ImpossibleDependency(f"{name}: a task it depends on ({kind}) {outcome}")
        unfinished = [t for t in c.after | c.follow if t not in done and t not in failed]
        if not (c.after.check(done, failed) and c.follow.check(done, failed)):
            return unfinished
        if not c.follow:
            return ()
        if c.follow.all and unfinished:
            return unfinished
        ran_on = set()
        for t in c.follow:
            if c.follow.success and t in done:
                ran_on.add(done[t])
            elif c.follow.failure and t in failed:
                ran_on.add(failed[t])
        if c.follow.all and len(ran_on) > 1:
            return ImpossibleDependency(
                f"{name}: follow: the tasks ran on different engines {sorted(ran_on)}"
            )
        live = sorted(ran_on & set(self._engines()))
        if not live:
            return ImpossibleDependency(f"{name}: follow: engine(s) {sorted(ran_on)} are gone")
        return tuple(live)

    def _time_out(self, held: _Held) -> None:
        with self._lock:
            if held.settled:
                return
            self._settle_locked(held)
        timeout = held.constraints.timeout
        self._fail(held, DependencyTimeout(f"{held.job.name}: dependencies not met within {timeout} s"))

    def _settle(self, held: _Held) -> None:
        with self._lock:
            self._settle_locked(held)

    def _settle_locked(self, held: _Held) -> None:
        held.settled = True
        if held.timer is not None:
            held.timer.cancel()
        for task_id in held.ids:
            self._held.pop(task_id, None)

    # --- acting -----------------------------------------------------------------------------

    def _fail(self, held: _Held, error: PxError) -> None:
        for task_id in held.ids:
            held.listener.on_result(TaskOutcome(task_id, -1, "error", error=error))

    def _send(self, held: _Held, engines: tuple[int, ...]) -> None:
        """Hand the job to the transport, on the first allowed engine (or load-balanced)."""
        listener: TaskListener = held.listener
        if held.constraints.recheck:
            listener = _Rechecking(self, held, list(engines) or None)
        target = engines[0] if engines else None
        job = dataclasses.replace(
            held.job,
            targets=[target] * len(held.ids),
            action=None if held.job.each is not None else held.actions[0],
            each=held.actions if held.job.each is not None else None,
            constraints=None,
        )
        self.send(held.ids, job, listener, held)

    def send(self, ids: Sequence[str], job: Job, listener: TaskListener, held: _Held) -> None:
        """Submit from a thread of our own: this may run in the transport's thread, which a
        submit of large payloads waits on."""
        with self._lock:
            closed = self._closed
            if closed is None and self._sender is None:
                self._sender = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pxgrpc-deps")
        if closed is not None or self._sender is None:
            for task_id in ids:
                listener.on_result(TaskOutcome(task_id, -1, "error", error=closed))
            return

        def submit() -> None:
            try:
                self._submit(ids, job, listener)
            except PxError as exc:
                for task_id in ids:
                    listener.on_result(TaskOutcome(task_id, -1, "error", error=exc))

        self._sender.submit(submit)

    def engines(self) -> list[int]:
        return self._engines()

    def new_ids(self, n: int) -> list[str]:
        return self._new_ids(n)


class _Rechecking:
    """Listens to the tasks of a `@require`/`@depend` job: a task an engine turned down
    (UnmetDependency) goes again, under a new id, to an engine not tried yet; when none is
    left it fails with ImpossibleDependency. Everything else reaches the job's listener under
    the task's first id."""

    def __init__(self, scheduler: DependencyScheduler, held: _Held, allowed: list[int] | None) -> None:
        self._scheduler = scheduler
        self._held = held
        self._allowed = allowed
        self._first = {task_id: task_id for task_id in held.ids}
        self._index = {task_id: i for i, task_id in enumerate(held.ids)}
        self._tried: dict[str, set[int]] = {}
        self._lock = threading.Lock()

    def on_output(self, task_id: str, engine_id: int, stream: str, text: str) -> None:
        self._held.listener.on_output(self._first[task_id], engine_id, stream, text)

    def on_display(self, task_id: str, engine_id: int, data: dict[str, str], metadata: str) -> None:
        self._held.listener.on_display(self._first[task_id], engine_id, data, metadata)

    def on_data(self, task_id: str, engine_id: int, data: dict[str, Any]) -> None:
        self._held.listener.on_data(self._first[task_id], engine_id, data)

    def on_result(self, outcome: TaskOutcome) -> None:
        with self._lock:
            first = self._first.pop(outcome.task_id)
        error = outcome.error
        if error is not None and getattr(error, "ename", "") == "UnmetDependency" and outcome.engine_id >= 0:
            tried = self._tried.setdefault(first, set())
            tried.add(outcome.engine_id)
            left = [e for e in (self._allowed or self._scheduler.engines()) if e not in tried]
            if left:
                self._retry(first, left[0])
                return
            reason = getattr(error, "evalue", str(error))
            error = ImpossibleDependency(
                f"{self._held.job.name}: no engine meets its dependencies (tried {sorted(tried)}; {reason})"
            )
            outcome = dataclasses.replace(outcome, status="error", error=error)
        self._held.listener.on_result(dataclasses.replace(outcome, task_id=first))

    def _retry(self, first: str, engine: int) -> None:
        [task_id] = self._scheduler.new_ids(1)
        with self._lock:
            self._first[task_id] = first
        action = self._held.actions[self._index[first]]
        job = dataclasses.replace(
            self._held.job, targets=[engine], action=action, each=None, constraints=None
        )
        log.debug("%s: engine turned the task down, trying engine %d", job.name, engine)
        self._scheduler.send([task_id], job, self, self._held)
