"""This client's task history: `rc.history`, `rc.get_result(...)` and `rc.resubmit(...)`.

ipyparallel's Hub keeps every task of every client in a database; pxgrpc's controller keeps no
task after its result is delivered (see the README, "ipyparallel API coverage"). The history here
is this client's own: the ids of the tasks it submitted, in order (the last `limit`), and for
each what is needed to show its result again and to resubmit it, without pinning large data:

- a result stays reachable while the program holds its AsyncResult, and for the last
  `RECENT_RESULTS` calls even after (so `dv.apply_sync(f); rc.get_result(-1)` works), unless
  its values came in blobs of over `SMALL` bytes: 16 pulls of a 64 MB array would otherwise
  pin 1 GB, and every later large transfer would need fresh memory (half the speed or worse);
- an action is kept for resubmitting only when it is small (code, names, and functions called
  with small arguments): a push or scatter of an array is not held alive by the history.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import threading
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pxgrpc.client.tasks import Action, Apply, Execute, Job, Pull

if TYPE_CHECKING:
    from pxgrpc.client.asyncresult import AsyncResult
    from pxgrpc.client.client import Client

#: How many tasks the history remembers by default.
HISTORY_LIMIT = 10_000
#: How many of the latest results the history holds after the program dropped them.
RECENT_RESULTS = 16
#: Arguments larger than this (bytes, arrays, strings, containers' lengths) are not kept.
SMALL = 64 * 1024


@dataclass
class TaskRecord:
    """One task this client submitted: the result it belongs to, and how to run it again."""

    result: weakref.ReferenceType[AsyncResult]
    name: str
    target: int | None
    retries: int
    #: None until a generated action (a scatter part) is built, or when it is too large to keep.
    action: Action | None
    kept: bool = True


class TaskHistory:
    """The ids of this client's tasks in submission order (`ids`, trimmed to the last `limit`),
    with a record of each of them."""

    def __init__(self, limit: int = HISTORY_LIMIT) -> None:
        self.limit = limit
        self.ids: list[str] = []
        self._records: collections.OrderedDict[str, TaskRecord] = collections.OrderedDict()
        self._recent: collections.deque[AsyncResult] = collections.deque(maxlen=RECENT_RESULTS)
        self._lock = threading.Lock()  # (views may submit from several threads)

    def add(self, task_ids: list[str], job: Job, ar: AsyncResult) -> Job:
        """Remember `job`'s tasks; returns the job to submit (its generated actions recorded)."""
        result = weakref.ref(ar)
        self._forget_large()
        self._recent.append(ar)  # (deque.append is atomic)
        actions: list[Action | None] = (
            [job.action] * len(task_ids)
            if job.each is None
            else list(job.each)
            if isinstance(job.each, list)
            else []
        )
        records = []
        if job.each is None:  # (one action for every target: is it kept? asked once)
            probe = TaskRecord(result, job.name, None, job.retries, None)
            _keep(probe, job.action)
            for target in job.targets:
                records.append(TaskRecord(result, job.name, target, job.retries, probe.action, probe.kept))
        else:
            for i, target in enumerate(job.targets):
                record = TaskRecord(result, job.name, target, job.retries, None)
                _keep(record, actions[i] if i < len(actions) else None)
                records.append(record)
        with self._lock:
            self._records.update(zip(task_ids, records, strict=True))
            self.ids.extend(task_ids)
            self._trim()
        if job.each is None or isinstance(job.each, list):
            return job
        return dataclasses.replace(job, each=_recording(job.each, records))

    def _forget_large(self) -> None:
        """Stop holding the recent results whose values are large (the program may still)."""
        large = [ar for ar in list(self._recent) if ar._events.largest_blobs > SMALL]
        for ar in large:
            with contextlib.suppress(ValueError):
                self._recent.remove(ar)

    def _trim(self) -> None:
        # Trim in steps of a tenth, so that a long run does not shift the list on every submit.
        if len(self.ids) > self.limit + self.limit // 10:
            del self.ids[: len(self.ids) - self.limit]
        while len(self._records) > self.limit:
            self._records.popitem(last=False)

    def task_ids(self, jobs: Any) -> tuple[list[str], bool]:
        """The task ids `jobs` names (history indices, task ids, AsyncResults, or a list of them)
        and whether it named one task alone (not a list)."""
        from pxgrpc.client.asyncresult import AsyncResult

        single = not isinstance(jobs, list | tuple | set | Iterator)
        ids: list[str] = []
        for job in [jobs] if single else list(jobs):
            if isinstance(job, AsyncResult):
                ids.extend(job.msg_ids)
                single = False
            elif isinstance(job, int) and not isinstance(job, bool):
                try:
                    ids.append(self.ids[job])
                except IndexError:
                    raise IndexError(
                        f"no task {job} in this client's history ({len(self.ids)} tasks)"
                    ) from None
            elif isinstance(job, str):
                ids.append(job)
            else:
                raise TypeError(
                    f"expected a task id (str), a history index (int) or an AsyncResult, not {job!r}"
                )
        return ids, single

    def record(self, task_id: str) -> TaskRecord:
        """What this client remembers of a task (KeyError naming it when it is not remembered)."""
        try:
            return self._records[task_id]
        except KeyError:
            raise KeyError(
                f"task {task_id!r} is not in this client's history (only tasks this client submitted, "
                f"the last {self.limit}, are kept: the controller keeps no task database)"
            ) from None

    def result(self, task_id: str) -> AsyncResult:
        """The AsyncResult a task belongs to (KeyError when it is no longer held)."""
        ar = self.record(task_id).result()
        if ar is None:
            raise KeyError(
                f"the result of task {task_id!r} is no longer held: the history keeps the results of "
                f"the last {RECENT_RESULTS} calls, and those the program still holds"
            )
        return ar

    def recall(self, client: Client, jobs: Any) -> AsyncResult:
        """A new AsyncResult for remembered tasks (`jobs` as in `task_ids`) that hears the
        events of the results they belong to, those past included (`Client.get_result`)."""
        from pxgrpc.client.asyncresult import AsyncResult

        ids, single = self.task_ids(jobs)
        sources = [self.result(task_id) for task_id in ids]
        records = [self.record(task_id) for task_id in ids]
        name = records[0].name if records else "get_result"
        targets = [r.target for r in records]
        ar = AsyncResult(client, ids, name, targets, single=single and len(ids) == 1)
        for source in {id(s): s for s in sources}.values():
            ar.follow(source)
        return ar

    def resubmission(self, jobs: Any) -> Job:
        """The job that runs finished remembered tasks again (`Client.resubmit`): same action,
        same engine or load-balanced again. ValueError for tasks still in flight, and for those
        whose data was too large to keep."""
        ids, single = self.task_ids(jobs)
        records = [self.record(task_id) for task_id in ids]
        for task_id, record in zip(ids, records, strict=True):
            source = record.result()
            if not record.kept:
                raise ValueError(
                    f"resubmit: task {task_id} ({record.name}) moved data too large to keep for "
                    "resubmitting; run the call again instead"
                )
            if (source is not None and not source.task_done(task_id)) or record.action is None:
                raise ValueError(
                    f"resubmit: task {task_id} is still in flight; only finished tasks can be resubmitted"
                )
        return Job(
            records[0].name if records else "resubmit",
            [r.target for r in records],
            each=[r.action for r in records if r.action is not None],
            single=single and len(ids) == 1,
            retries=max((r.retries for r in records), default=0),
        )


def _keep(record: TaskRecord, action: Action | None) -> None:
    """Keep `action` in `record` for resubmitting, if it is small."""
    record.action = action if action is not None and _small_action(action) else None
    record.kept = action is None or record.action is not None


def _small_action(action: Action) -> bool:
    if isinstance(action, Execute | Pull):
        return True
    if isinstance(action, Apply):
        return all(_small(v) for v in [*action.args, *action.kwargs.values()])
    return False  # a push: the data is the point, and may be large


def _small(value: Any, depth: int = 0) -> bool:
    if value is None or isinstance(value, bool | int | float | complex):
        return True
    if isinstance(value, str | bytes | bytearray):
        return len(value) <= SMALL
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes <= SMALL
    if isinstance(value, list | tuple | set | frozenset | dict):
        items = list(value.items()) if isinstance(value, dict) else list(value)
        return depth < 3 and len(items) <= SMALL // 64 and all(_small(v, depth + 1) for v in items)
    return callable(value)  # (functions are small; other objects may be anything)


def _recording(actions: Iterable[Action], records: list[TaskRecord]) -> Iterator[Action]:
    for record, action in zip(records, actions, strict=False):
        _keep(record, action)
        yield action
