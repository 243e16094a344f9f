"""The order of one client's tasks on one engine, whichever path each takes.

A task reaches its engine through the controller (relayed) or straight, on a direct link. The
engine runs what it receives in the order it receives it, but the two paths race each other. So
a task goes direct only while none of this client's tasks for that engine is in flight through
the controller, and a relayed task is held (behind a *drain*) until this client's direct tasks
on its engine have their results.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Sequence


class EngineOrder:
    """This client's tasks in flight per engine and path (from any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # engine -> tasks in flight through the controller, and sent directly
        # (plain dicts: a Counter's missing keys and deletions cost a Python call each)
        self._relay_on: dict[int, int] = {}
        self._direct_on: dict[int, int] = {}
        # task -> (engine, sent directly)
        self._task_path: dict[str, tuple[int, bool]] = {}
        # engine -> relayed tasks waiting until its direct tasks are done
        self._drains: dict[int, list[concurrent.futures.Future[None]]] = {}

    def go_direct(self, task_ids: Sequence[str], engine_ids: Sequence[int]) -> bool:
        """Count tasks as sent straight to these engines; False (nothing counted) when one of
        the engines has a relayed task of this client in flight: then they must be relayed."""
        with self._lock:
            if self._relay_on and any(engine_id in self._relay_on for engine_id in engine_ids):
                return False
            for task_id, engine_id in zip(task_ids, engine_ids, strict=True):
                self._direct_on[engine_id] = self._direct_on.get(engine_id, 0) + 1
                self._task_path[task_id] = (engine_id, True)
        return True

    def relayed(self, task_id: str, engine_id: int) -> concurrent.futures.Future[None] | None:
        """Count a task relayed to an engine; returns its drain, a future done once the engine's
        direct tasks are (when some are in flight: the task must not overtake them)."""
        with self._lock:
            self._relay_on[engine_id] = self._relay_on.get(engine_id, 0) + 1
            self._task_path[task_id] = (engine_id, False)
            if engine_id not in self._direct_on:
                return None
            drain: concurrent.futures.Future[None] = concurrent.futures.Future()
            self._drains.setdefault(engine_id, []).append(drain)
        return drain

    def done(self, task_id: str) -> None:
        """A task's result came (either path): the drains it held may open."""
        drains: list[concurrent.futures.Future[None]] = []
        with self._lock:
            path = self._task_path.pop(task_id, None)
            if path is None:
                return
            engine_id, direct = path
            counts = self._direct_on if direct else self._relay_on
            counts[engine_id] -= 1
            if counts[engine_id] <= 0:
                del counts[engine_id]
                if direct:
                    drains = self._drains.pop(engine_id, [])
        for drain in drains:
            drain.set_result(None)

    def direct_tasks_on(self, engine_id: int) -> list[str]:
        """The tasks in flight on an engine's direct link."""
        with self._lock:
            return [t for t, path in self._task_path.items() if path == (engine_id, True)]
