"""When the controller hears of the tasks clients hand an engine directly.

The controller learns of a direct task from its client's announcement; the engine tells it
more (`EngineMessage.direct_started`, `direct_finished`) on its work stream. Those notices are
batched, and a short task costs no message of its own: only a task still queued or running a
while after it came is told of as started (the controller then counts the engine busy with it,
and hears soon of its end); a task done sooner is told of only as finished, riding along with
the next message up the work stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

#: Seconds after it came that a direct task still queued or running is told of as started.
START_NOTICE_DELAY = 0.1
#: Seconds the controller hears of the end of a direct task it heard of as started, at most.
NOTICE_DELAY = 0.005
#: Seconds a direct task the controller never heard of as started may wait to be told of as
#: finished (meanwhile only the engine's count of completed tasks lags).
QUIET_NOTICE_DELAY = 0.25
#: (A timer may fire a clock tick early.)
_EARLY = 0.001


class DirectNotices:
    """The direct tasks to tell the controller of, and when a message must carry them. Use in
    the I/O thread only; `wake` is called when some notice is due."""

    def __init__(self, loop: asyncio.AbstractEventLoop, wake: Callable[[], None]) -> None:
        self._loop = loop
        self._wake = wake
        # Tasks not yet told of as started, and when they came (oldest first).
        self._started: dict[str, float] = {}
        self._finished: list[str] = []
        # Told of as started and not yet as finished: their end is news.
        self._told_started: set[str] = set()
        self._news_since: float | None = None
        self._quiet_since: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0
        #: Whether a message must be sent for the notices (else they wait to ride along).
        self.due = False

    def started(self, task_ids: list[str]) -> None:
        """These tasks came."""
        now = self._loop.time()
        for task_id in task_ids:
            self._started[task_id] = now
        self._arm()

    def finished(self, task_ids: list[str], news: bool = False) -> None:
        """These tasks' results went back to their clients (`news`: the controller may count
        them as running, from their client's word, even if not told of as started)."""
        now = self._loop.time()
        for task_id in task_ids:
            self._finished.append(task_id)
            told = task_id in self._told_started
            if (self._started.pop(task_id, None) is None and told) or news:
                self._news_since = self._news_since or now
            elif self._quiet_since is None:
                self._quiet_since = now
        self._arm()

    def take(self) -> tuple[list[str], list[str]]:
        """Every notice waiting, for a message: (started, finished) task ids."""
        started, finished = list(self._started), self._finished
        self._told_started.difference_update(finished)
        self._told_started.update(started)
        self._started, self._finished = {}, []
        self._news_since = self._quiet_since = None
        self.due = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return started, finished

    def _due_at(self) -> float:
        """When the notices waiting must leave, if nothing takes them sooner."""
        due = float("inf")
        if self._started:
            due = next(iter(self._started.values())) + START_NOTICE_DELAY
        if self._news_since is not None:
            due = min(due, self._news_since + NOTICE_DELAY)
        if self._quiet_since is not None:
            due = min(due, self._quiet_since + QUIET_NOTICE_DELAY)
        return due

    def _arm(self) -> None:
        """Set the timer for when the notices are due: sooner or later than it was (a task
        done before it was told of as started moves the time on: no wake-up for nothing)."""
        due = self._due_at()
        if self._timer is not None:
            if abs(self._timer_due - due) < _EARLY:
                return
            self._timer.cancel()
            self._timer = None
        if due != float("inf"):
            self._timer_due = due
            self._timer = self._loop.call_at(due, self._check)

    def _check(self) -> None:
        self._timer = None
        if self._loop.time() >= self._due_at() - _EARLY:
            self.due = True
            self._wake()
        else:
            self._arm()
