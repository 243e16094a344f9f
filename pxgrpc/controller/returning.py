"""Tasks for engines that a restored controller expects back.

A controller restarted with `--restore` knows the engine ids it gave out, but not yet their
engines: they redial with backoff, and a client may come back first. A task a client addresses
to such an engine meanwhile (submitted during the outage, or just after it) is no mistake of
the client's: it waits here, and goes to its engine, in the order submitted, once the engine
registers again. Should the engine not be back when the restore grace is over
(`--restore-grace`), the task fails with an `InvalidTargetError` that says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from pxgrpc import wire
from pxgrpc.controller.registry import EngineRecord, EngineRegistry
from pxgrpc.controller.tasks import ClientSession, TaskRecord, failure


class ReturningEngines:
    """The tasks waiting for engines a restored controller expects back, engine by engine."""

    def __init__(self) -> None:
        self._waiting: dict[int, list[TaskRecord]] = {}

    def hold(self, engine_id: int, record: TaskRecord) -> None:
        """Keep a task until its engine is back (after the ones held for it already)."""
        self._waiting.setdefault(engine_id, []).append(record)

    def __iter__(self) -> Iterator[TaskRecord]:
        return (record for records in self._waiting.values() for record in records)

    def __len__(self) -> int:
        return sum(len(records) for records in self._waiting.values())

    def release(
        self,
        registry: EngineRegistry,
        expected: set[int],
        assign: Callable[[TaskRecord, EngineRecord], None],
        drop: Callable[[TaskRecord], None],
    ) -> None:
        """Send the held tasks of the engines that are back; fail those of engines no longer
        `expected` (the restore grace is over) with a reason."""
        for engine_id in list(self._waiting):
            engine = registry.get(engine_id)
            if engine is not None:
                for record in self._waiting.pop(engine_id):
                    assign(record, engine)
            elif engine_id not in expected:
                ids = [e.engine_id for e in registry.live()]
                evalue = (
                    f"engine {engine_id} did not come back after the controller restarted "
                    f"(engines now: {ids}); the task was not run"
                )
                for record in self._waiting.pop(engine_id):
                    drop(record)
                    record.session.emit(
                        failure(record.task_id, engine_id, wire.TASK_ERROR, "InvalidTargetError", evalue)
                    )

    def remove(self, wanted: Callable[[int, TaskRecord], bool]) -> list[TaskRecord]:
        """Take out the held tasks `wanted(engine_id, record)` says yes to (an abort, a closed
        session)."""
        taken: list[TaskRecord] = []
        for engine_id, records in list(self._waiting.items()):
            keep = [r for r in records if not wanted(engine_id, r)]
            taken.extend(r for r in records if wanted(engine_id, r))
            if keep:
                self._waiting[engine_id] = keep
            else:
                del self._waiting[engine_id]
        return taken

    def of_session(self, session: ClientSession) -> list[TaskRecord]:
        """Take out the held tasks of a session that is over."""
        return self.remove(lambda engine_id, record: record.session is session)
