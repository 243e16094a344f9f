"""The tasks a client submitted that have not finished: who listens to each, and where its
result blobs wait."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from pxgrpc.client.errors import PxConnectionError
from pxgrpc.client.tasks import TaskListener


class InFlight:
    """The tasks submitted and not finished: who listens to each, and, for tasks whose result
    blobs wait on their engine's data endpoint, that endpoint. The submitter adds tasks; the
    session stream's reader takes them off as their results come."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: dict[str, TaskListener] = {}
        self._result_urls: dict[str, str] = {}
        #: Why the connection failed, once it has: new submits raise it.
        self.failure: PxConnectionError | None = None

    def add(self, task_ids: Sequence[str], listener: TaskListener, result_urls: dict[str, str]) -> None:
        """Tasks about to be submitted (raises the connection's failure, once there is one)."""
        if self.failure is not None:
            raise self.failure
        with self._lock:
            for task_id in task_ids:
                self._listeners[task_id] = listener
            self._result_urls.update(result_urls)

    def listener(self, task_id: str) -> TaskListener | None:
        """Who listens to a task still running."""
        return self._listeners.get(task_id)

    def finish(self, task_id: str) -> tuple[TaskListener | None, str | None]:
        """A task's result came: its listener, and the data endpoint holding its blobs (or None)."""
        with self._lock:
            return self._listeners.pop(task_id, None), self._result_urls.pop(task_id, None)

    def drop_url(self, task_id: str) -> None:
        """A task's result blobs will come through the controller after all (its engine's
        data endpoint could not be reached)."""
        with self._lock:
            self._result_urls.pop(task_id, None)

    def pending(self) -> list[str]:
        """The tasks still waiting for their result."""
        with self._lock:
            return list(self._listeners)

    def fail_all(self, error: PxConnectionError) -> dict[str, TaskListener]:
        """The connection is gone: forget every task; returns them with their listeners."""
        with self._lock:
            self.failure = self.failure or error
            listeners, self._listeners = self._listeners, {}
            self._result_urls.clear()
        return listeners
