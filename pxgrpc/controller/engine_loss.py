"""When an engine is lost: its tasks fail with an error saying how it died, or, for load-balanced
tasks with retries left, go back to the front of the queue.

A supervised engine's tasks wait a few seconds for its supervisor's exit report (see `deaths`),
so that their error says how the engine died. A direct task its client announces only after
the engine was lost (clients announce direct tasks a few milliseconds late, and only those still
running) fails in the same way (`late_announcement`).
"""

from __future__ import annotations

import collections
from collections.abc import Callable

from pxgrpc import wire
from pxgrpc.controller import deaths
from pxgrpc.controller.balancer import LoadBalancer
from pxgrpc.controller.registry import EngineRecord, EngineRegistry
from pxgrpc.controller.tasks import TaskRecord, failure

#: How many lost engines are remembered for direct tasks announced after their loss.
REMEMBERED_ENGINES = 256


class EngineLoss:
    """Settles the tasks of engines that died or disconnected."""

    def __init__(
        self, registry: EngineRegistry, balancer: LoadBalancer, release: Callable[[TaskRecord], None]
    ) -> None:
        self.registry = registry
        self.balancer = balancer
        self._release = release
        self.exit_reports = deaths.ExitReports(self._settle_lost)
        #: Engines lost lately (engine id -> the engine, why it was lost).
        self._recent: collections.OrderedDict[int, tuple[EngineRecord, str]] = collections.OrderedDict()

    def engine_lost(self, engine: EngineRecord, reason: str) -> None:
        """Fail (or re-queue, for load-balanced tasks with retries left) the engine's tasks."""
        if not self.registry.remove(engine):
            return
        if engine.signalled:
            reason = f"{reason} after an Interrupt sent it {engine.signalled}"
        engine.drop_direct_finished()  # (kept for late announcements: only what they need)
        self._recent[engine.engine_id] = (engine, reason)
        self._recent.move_to_end(engine.engine_id)
        while len(self._recent) > REMEMBERED_ENGINES:
            self._recent.popitem(last=False)
        if engine.supervised:
            self.exit_reports.lost(engine)
        if engine.supervised and not engine.exit_report and (engine.inflight or engine.announced):
            self.exit_reports.await_report(engine, reason)
            return
        self._settle_lost(engine, engine.exit_report or reason)

    def engine_exited(self, report: wire.pb.EngineExit) -> int | None:
        """A supervisor's report of how an engine process ended: settle that engine's tasks
        with it; the engine's id, or None when no engine was that process."""
        why = deaths.describe_exit(report)
        engine = self.exit_reports.take(report.hostname, report.pid)
        if engine is not None:
            self.exit_reports.lost_id(report.hostname, report.pid)
            self._settle_lost(engine, why)
            return engine.engine_id
        engine = self.registry.by_process(report.hostname, report.pid)
        if engine is None:
            engine_id = self.exit_reports.lost_id(report.hostname, report.pid)
            lost = self._recent.get(engine_id) if engine_id is not None else None
            if lost is not None and lost[0].pid == report.pid and lost[0].hostname == report.hostname:
                lost[0].exit_report = why  # (for tasks announced after the loss)
            return engine_id
        engine.exit_report = why
        self.engine_lost(engine, why)
        self.exit_reports.lost_id(report.hostname, report.pid)  # (reported: nothing to remember)
        return engine.engine_id

    def late_announcement(self, engine_id: int, record: TaskRecord) -> bool:
        """A direct task announced after its engine was lost: it fails with that engine's death
        (once its exit report is in, as the engine's other tasks), also if it finished: its
        client, which announces only tasks it has no result for, will never have one. False
        when no engine of that id was lost lately (the announcement is ignored)."""
        lost = self._recent.get(engine_id)
        if lost is None:
            return False
        engine, reason = lost
        engine.announced[record.key] = record
        if self.exit_reports.awaits(engine):
            return True  # (settled with the others when the report comes)
        if engine.supervised and not engine.exit_report:
            self.exit_reports.await_report(engine, reason)
            return True
        self._settle_lost(engine, engine.exit_report or reason)
        return True

    def _settle_lost(self, engine: EngineRecord, reason: str) -> None:
        lost = [*engine.inflight.values(), *engine.announced.values()]
        engine.inflight.clear()
        engine.announced.clear()
        retry: list[TaskRecord] = []
        who = f"engine {engine.engine_id} (pid {engine.pid} on {engine.hostname})"
        for record in lost:
            record.deaths.append(f"{who} {reason}")
            if record.load_balanced and record.retries > 0:
                record.retries -= 1
                retry.append(record)
                continue
            self._release(record)
            record.session.emit(
                failure(
                    record.task_id,
                    engine.engine_id,
                    wire.TASK_ENGINE_DIED,
                    "EngineError",
                    _death_message(record),
                    record.submitted,
                )
            )
        self.balancer.queue.extendleft(reversed(retry))  # first in line again, in their order
        self.balancer.schedule()


def _death_message(record: TaskRecord) -> str:
    """Why a task failed: its engine's death, or every death when its retries are spent."""
    if len(record.deaths) == 1:
        return record.deaths[0]
    return (
        f"task {record.task_id!r} was tried on {len(record.deaths)} engines and each one "
        f"died while running it; its retries are spent, so it is not tried again:\n"
        + "\n".join(f"  {i}. {death}" for i, death in enumerate(record.deaths, 1))
    )
