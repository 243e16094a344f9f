"""A gather of arrays built once, in place: the parts' blobs land in one preallocated array.

Without this, each engine's part is received into a buffer of its own and decoded there, then
`np.concatenate` copies every part into the joined array: for 80 MB, a second pass over all of
it. A gather's tasks are marked (`Job.assemble`): the transport holds their results (replies
are small: the bytes stay on the engines, or in the controller, until downloaded) until all are
in. When every part is an array of one dtype and the same trailing shape, whose bytes are
exactly one blob, the transport allocates the joined array once and downloads each part's blob
straight into its slice; each task's value is that slice, and `partition.join_parts` sees slices
that tile one array and returns the array itself (`partition.tiled`). Anything else (an error,
a list, mixed dtypes) is delivered as usual, part by part.

When every part's engine shares memory with the client (`DataPath.shares_memory`), the joined
array is a shared file instead: each engine writes its part straight into its place in the
client's memfd (`DownloadRequest.into` at the part's offset) and the client maps the whole file
once they are done: no copy in the client at all, and no fresh pages to fault in there.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pxgrpc import blobstream, sharedmem, wire
from pxgrpc.client.errors import PxConnectionError
from pxgrpc.client.tasks import TaskListener, TaskOutcome

log = logging.getLogger(__name__)

#: A shared file of the client's, and the byte of its blob where a part goes.
Region = tuple[sharedmem.SharedFile, int]
#: Downloads a result blob: (url of the engine's data endpoint or None: the controller, blob id,
#: where its bytes should land, or the shared file region an engine on this host may write them
#: into). Raises PxConnectionError or wire.DecodingError.
Fetch = Callable[[str | None, str, memoryview | None, Region | None], Awaitable[blobstream.IncomingBlob]]
#: Whether the engine at a data endpoint url shares memory with this client.
SharesMemory = Callable[[str], bool]
#: The joined array's dtype and each part's shape.
Plan = tuple[np.dtype[Any], list[tuple[int, ...]]]
#: Decodes a TaskResult with the blobs it references (outcomes.decode_outcome).
Decode = Callable[[wire.pb.TaskResult, wire.BlobMap, float], TaskOutcome]


@dataclass
class Held:
    """One task's result, held until the other parts are in."""

    result: wire.pb.TaskResult
    listener: TaskListener
    url: str | None
    received: float


class Assembly:
    """The tasks of one gather, in engine order, and the results that came so far."""

    def __init__(self, task_ids: Sequence[str]) -> None:
        self._order = {task_id: i for i, task_id in enumerate(task_ids)}
        self._held: list[Held | None] = [None] * len(task_ids)
        self._missing = len(task_ids)
        self._lock = threading.Lock()

    @property
    def task_ids(self) -> list[str]:
        return list(self._order)

    def add(self, held: Held) -> bool:
        """A part's result came; True when it was the last one."""
        with self._lock:
            self._held[self._order[held.result.task_id]] = held
            self._missing -= 1
            return self._missing == 0

    def held(self) -> list[Held]:
        """The results that came (in engine order)."""
        with self._lock:
            return [h for h in self._held if h is not None]

    def plan(self) -> Plan | None:
        """(The dtype, each part's shape) when every part is an array in a blob of its own, of
        one dtype and the same trailing shape; else None."""
        parts = self.held()
        if len(parts) != len(self._held):
            return None
        shapes: list[tuple[int, ...]] = []
        dtype = None
        for held in parts:
            array = _array_in_one_blob(held.result)
            if array is None:
                return None
            part_dtype = wire.parse_dtype(array.dtype, "value.array_value.dtype")
            shape = tuple(array.shape)
            if dtype is None:
                dtype = part_dtype
            if part_dtype != dtype or len(shape) != len(shapes[0] if shapes else shape) or not shape:
                return None
            if shapes and shape[1:] != shapes[0][1:]:
                return None
            if array.data.blob.length != math.prod(shape) * part_dtype.itemsize:
                return None
            shapes.append(shape)
        assert dtype is not None
        return dtype, shapes

    def layout(self) -> tuple[np.ndarray, list[np.ndarray]] | None:
        """(The joined array, each part's slice of it), allocated, when the parts allow."""
        plan = self.plan()
        if plan is None:
            return None
        dtype, shapes = plan
        try:
            joined = np.empty(_joined_shape(shapes), dtype=dtype)
        except (MemoryError, ValueError):
            return None
        return joined, _slices(joined, shapes)

    async def deliver(self, fetch: Fetch, decode: Decode, shares_memory: SharesMemory | None = None) -> None:
        """Download every part (into the joined array when the parts allow) and tell each
        task's listener its outcome."""
        parts = self.held()
        plan = self.plan()
        file = _shared_file(parts, shares_memory) if plan is not None else None
        if plan is not None and file is not None:
            try:
                await _deliver_shared(parts, plan, file, fetch, decode)
            except Exception as exc:  # a bug must not leave the gather waiting forever
                log.exception("gather: delivering through shared memory failed")
                self.fail(PxConnectionError(f"gather: {exc!r}"))
            finally:
                file.close()
            return
        planned = self.layout()
        if planned is None:
            await asyncio.gather(*(_deliver_one(held, fetch, decode) for held in parts))
            return
        _, slices = planned
        await asyncio.gather(
            *(_deliver_one(held, fetch, decode, part) for held, part in zip(parts, slices, strict=True))
        )

    def fail(self, error: PxConnectionError) -> None:
        """The connection is gone: the held parts fail with it (the others fail on their own)."""
        for held in self.held():
            result = held.result
            held.listener.on_result(TaskOutcome(result.task_id, result.engine_id, "error", error=error))


def _array_in_one_blob(result: wire.pb.TaskResult) -> Any:
    """The NDArray a successful result's value is, when its bytes are all of its one blob."""
    if result.status != wire.TASK_OK or not result.HasField("value"):
        return None
    if result.value.WhichOneof("kind") != "array_value" or len(result.blob_ids) != 1:
        return None
    array = result.value.array_value
    data = array.data
    if data.WhichOneof("location") != "blob" or data.blob.offset != 0:
        return None
    return array if data.blob.blob_id == result.blob_ids[0] else None


def _joined_shape(shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    return (sum(s[0] for s in shapes), *shapes[0][1:])


def _slices(joined: np.ndarray, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    slices, start = [], 0
    for shape in shapes:
        slices.append(joined[start : start + shape[0]])
        start += shape[0]
    return slices


def _shared_file(parts: list[Held], shares_memory: SharesMemory | None) -> sharedmem.SharedFile | None:
    """A shared file for the joined array, when every part's engine shares memory with us."""
    if shares_memory is None or not all(h.url is not None and shares_memory(h.url) for h in parts):
        return None
    try:
        return sharedmem.SharedFile(0)
    except OSError:  # (e.g. out of file descriptors: the joined array is allocated here)
        return None


async def _deliver_shared(
    parts: list[Held], plan: Plan, file: sharedmem.SharedFile, fetch: Fetch, decode: Decode
) -> None:
    """Have each part's engine write it into its place in `file`, map the file as the joined
    array, and deliver each part as its slice."""
    dtype, shapes = plan
    sizes = [math.prod(shape) * dtype.itemsize for shape in shapes]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    misfits: list[str] = []

    async def write(held: Held, at: int, size: int) -> PxConnectionError | None:
        blob_id = held.result.blob_ids[0]
        try:
            blob = await fetch(held.url, blob_id, None, (file, at))
            if blob.size != size:
                misfits.append(f"blob {blob_id} has {blob.size} bytes, but its array {size}")
            elif not isinstance(blob, sharedmem.WrittenBlob):  # (the bytes came instead)
                file.write_at(at, memoryview(blob.buffer))  # type: ignore[arg-type]
        except (PxConnectionError, wire.DecodingError, OSError) as exc:
            return exc if isinstance(exc, PxConnectionError) else PxConnectionError(str(exc))
        return None

    errors = await asyncio.gather(*(write(h, at, n) for h, at, n in zip(parts, starts, sizes, strict=True)))
    try:
        if misfits:  # (a part of another size may have spilled into its neighbours' places)
            raise sharedmem.SharedBlobUnusable("; ".join(misfits))
        slices = _slices(file.map_array(dtype, _joined_shape(shapes)), shapes)
    except (OSError, sharedmem.SharedBlobUnusable) as exc:
        failed = PxConnectionError(f"gather: the joined array cannot be built ({exc})")
        errors, slices = [e or failed for e in errors], []
    for i, (held, error) in enumerate(zip(parts, errors, strict=True)):
        result = held.result
        if error is not None:
            held.listener.on_result(TaskOutcome(result.task_id, result.engine_id, "error", error=error))
            continue
        part = slices[i]
        blob_id = result.blob_ids[0]
        filled = sharedmem.FilledBlob(blob_id, memoryview(part).cast("B"))  # type: ignore[arg-type]
        outcome = decode(result, {blob_id: filled}, held.received)
        if outcome.error is None:
            outcome.value = part
        held.listener.on_result(outcome)


async def _deliver_one(held: Held, fetch: Fetch, decode: Decode, part: np.ndarray | None = None) -> None:
    """Fetch a result's blobs (into `part`'s memory when given) and deliver its outcome."""
    result = held.result
    try:
        blobs = {}
        for blob_id in result.blob_ids:
            into = memoryview(part).cast("B") if part is not None else None  # type: ignore[arg-type]
            blobs[blob_id] = blob = await fetch(held.url, blob_id, into, None)
            if not blob.in_place:
                # (the blob was not the size its value said: it came into a buffer of its own)
                part = None
        outcome = decode(result, blobs, held.received)
        if part is not None and outcome.error is None:
            outcome.value = part  # (the same bytes: a slice of the joined array, not a view of a view)
    except (PxConnectionError, wire.DecodingError) as exc:
        err = exc if isinstance(exc, PxConnectionError) else PxConnectionError(str(exc))
        outcome = TaskOutcome(result.task_id, result.engine_id, "error", error=err)
    held.listener.on_result(outcome)
