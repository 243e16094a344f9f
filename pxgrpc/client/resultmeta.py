"""The metadata of one task, as ipyparallel's AsyncResult shows it (`ar.metadata`, `ar.<key>`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pxgrpc.client.executereply import decode_bundle
from pxgrpc.client.tasks import TaskOutcome

#: The keys of each task's metadata (also `ar.<key>` and `ar["<key>"]`).
METADATA_KEYS = frozenset(
    [
        "msg_id",
        "engine_id",
        "submitted",
        "started",
        "completed",
        "received",
        "status",
        "stdout",
        "stderr",
        "outputs",
        "execute_result",
        "execution_count",
        "error",
        "data",
    ]
)


def _stamp(seconds: float) -> datetime | None:
    return datetime.fromtimestamp(seconds) if seconds else None


def task_metadata(
    msg_id: str,
    o: TaskOutcome | None,
    submitted: float,
    *,
    engine_id: int | None,
    stdout: str,
    stderr: str,
    outputs: list[dict[str, Any]],
    data: dict[str, Any],
) -> dict[str, Any]:
    """One task's metadata dict; `o` is its outcome (None while it runs), `submitted` when this
    client submitted it (used until the controller's time is known)."""
    result = None
    if o is not None and o.execute_result is not None:
        result = {
            "data": decode_bundle(o.execute_result),
            "metadata": {},
            "execution_count": o.execution_count,
        }
    return {
        "msg_id": msg_id,
        "engine_id": engine_id,
        "submitted": datetime.fromtimestamp(o.submitted if o and o.submitted else submitted),
        "started": _stamp(o.started) if o else None,
        "completed": _stamp(o.completed) if o else None,
        "received": _stamp(o.received) if o else None,
        "status": o.status if o else "pending",
        "stdout": stdout,
        "stderr": stderr,
        "outputs": outputs,
        "execute_result": result,
        "execution_count": o.execution_count if o else 0,
        "error": o.error if o else None,
        "data": data,
    }
