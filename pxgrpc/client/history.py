"""This client's task history: `rc.history`, `rc.get_result(...)` and `rc.resubmit(...)`.

ipyparallel's Hub keeps every task of every client in a database; pxgrpc's controller keeps no
task after its result is delivered (see the README, "ipyparallel API coverage"). The history here
is this client's own: the ids of the tasks it submitted, in order, and for the most recent ones
(at most `limit` tasks) what is needed to show their results again and to resubmit them.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pxgrpc.client.tasks import Action, Job

if TYPE_CHECKING:
    from pxgrpc.client.asyncresult import AsyncResult

#: How many tasks the history remembers (ids, actions and results) by default.
HISTORY_LIMIT = 10_000


@dataclass
class TaskRecord:
    """One task this client submitted: the result it belongs to, and how to run it again."""

    result: AsyncResult
    name: str
    target: int | None
    retries: int
    action: Action | None  # (None until a generated action, e.g. a scatter part, is built)


class TaskHistory:
    """The ids of this client's tasks in submission order (`ids`, trimmed to the last `limit`),
    with a record of each of them."""

    def __init__(self, limit: int = HISTORY_LIMIT) -> None:
        self.limit = limit
        self.ids: list[str] = []
        self._records: collections.OrderedDict[str, TaskRecord] = collections.OrderedDict()

    def add(self, task_ids: list[str], job: Job, ar: AsyncResult) -> Job:
        """Remember `job`'s tasks; returns the job to submit (its generated actions recorded)."""
        records = []
        for task_id, target in zip(task_ids, job.targets, strict=True):
            action = job.action if job.each is None else None
            record = TaskRecord(ar, job.name, target, job.retries, action)
            self._records[task_id] = record
            records.append(record)
        self.ids.extend(task_ids)
        self._trim()
        if job.each is None:
            return job
        return dataclasses.replace(job, each=_recording(job.each, records))

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


def _recording(actions: Iterable[Action], records: list[TaskRecord]) -> Iterator[Action]:
    for record, action in zip(records, actions, strict=False):
        record.action = action
        yield action
