"""Task results from the wire turned into the client's `TaskOutcome`s."""

from __future__ import annotations

from pxgrpc import wire
from pxgrpc.client.errors import EngineError, PxError, RemoteError, TaskAborted
from pxgrpc.client.tasks import TaskOutcome

_STATUS = {
    wire.TASK_OK: "ok",
    wire.TASK_ERROR: "error",
    wire.TASK_ABORTED: "aborted",
    wire.TASK_ENGINE_DIED: "engine_died",
}


def outcome_error(result: wire.pb.TaskResult) -> PxError | None:
    """The exception a failed TaskResult stands for."""
    status = result.status
    if status == wire.TASK_OK:
        return None
    err = result.error
    if status == wire.TASK_ENGINE_DIED:
        return EngineError(err.evalue, result.engine_id)
    if status == wire.TASK_ABORTED:
        return TaskAborted(f"task {result.task_id} was aborted before it started")
    engine_id = result.engine_id if result.engine_id >= 0 else None
    return RemoteError(err.ename, err.evalue, "".join(err.traceback), engine_id)


def decode_outcome(result: wire.pb.TaskResult, blobs: wire.BlobMap, received: float) -> TaskOutcome:
    """The outcome a TaskResult reports, its value decoded (with the blobs it references)."""
    outcome = TaskOutcome(
        task_id=result.task_id,
        engine_id=result.engine_id,
        status=_STATUS.get(result.status, "error"),
        error=outcome_error(result) if result.status != wire.TASK_OK else None,
        execution_count=result.execution_count,
        submitted=result.submitted,
        started=result.started,
        completed=result.completed,
        received=received,
        blob_bytes=sum(blob.size for blob in blobs.values()) if blobs else 0,
    )
    if result.HasField("execute_result"):
        outcome.execute_result = dict(result.execute_result.data)
    if outcome.error is None and result.HasField("value"):
        try:
            outcome.value = wire.decode(result.value, blobs)
        except Exception as exc:  # noqa: BLE001 - e.g. a class this client cannot import
            outcome.status = "error"
            outcome.error = RemoteError(
                type(exc).__name__, f"cannot load the result here: {exc}", engine_id=result.engine_id
            )
    return outcome
