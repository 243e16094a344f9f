"""An engine: the main thread runs tasks one after another; the I/O thread talks to the controller."""

from __future__ import annotations

import collections
import logging
import signal
import sys
import time
from types import FrameType
from typing import Any

from pxgrpc import datapub, wire
from pxgrpc.engine import blobtransfer
from pxgrpc.engine.connection import EngineConnection, wait_registered
from pxgrpc.engine.kernel import Kernel, Outcome, remote_exception
from pxgrpc.engine.lanes import EngineLane
from pxgrpc.engine.output import OutputStream
from pxgrpc.engine.reaper import Reaper
from pxgrpc.engine.taskqueue import TaskQueue, WorkItem
from pxgrpc.engine.warmup import warm_up
from pxgrpc.memory import reuse_freed_memory
from pxgrpc.security.connection_file import ConnectionInfo

log = logging.getLogger(__name__)

#: The lanes' tasks answered the moment they were read (`Engine.run_at_once`), by action.
answered_at_once: collections.Counter[str] = collections.Counter()

#: The largest display bundle sent (one message carries it: half of gRPC's and a lane's limit).
MAX_DISPLAY_BYTES = wire.MAX_MESSAGE // 2


class Engine:
    """Runs tasks from the controller in a persistent namespace until told to stop."""

    def __init__(self, info: ConnectionInfo) -> None:
        reuse_freed_memory()
        self.tasks = TaskQueue()
        self.conn = EngineConnection(info, self.tasks)
        self.kernel = Kernel(display_sink=self._publish_display)
        # The blobs of a lane's task, got as its values are decoded.
        self._on_demand = blobtransfer.OnDemand(self.conn.blob_now)
        # Frees the shared-memory arrays a push replaced, off the main thread.
        self._reaper = Reaper()
        self.stdout = OutputStream(wire.STDOUT, "<stdout>", self.conn.emit, self.conn.schedule)
        self.stderr = OutputStream(wire.STDERR, "<stderr>", self.conn.emit, self.conn.schedule)
        self._in_user_code = False
        self.conn.at_once = self.run_at_once
        datapub.set_publisher(self._publish_data)

    def _publish_data(self, data: dict[str, Any]) -> None:
        """`pxgrpc.datapub.publish_data` in user code: one DataEvent for the running task, after
        the text printed before it."""
        event = wire.pb.DataEvent(task_id=self.stdout.task_id, engine_id=self.conn.engine_id)
        encoder = wire.Encoder()
        for name, value in data.items():
            encoder.encode_into(value, event.data[name])
        if encoder.blob is not None or event.ByteSize() > wire.MAX_INLINE:
            raise ValueError(
                f"publish_data: {sorted(data)} is too large to publish (more than {wire.MAX_INLINE} "
                "bytes); publish small values (progress, a few numbers) and return or push the rest"
            )
        self.stdout.send()
        self.stderr.send()
        self.conn.emit(wire.pb.TaskEvent(data=event))

    def _publish_display(self, data: dict[str, str], metadata_json: str) -> None:
        """display() in user code: text printed before it goes first, then the DisplayEvent."""
        self.stdout.send()
        self.stderr.send()
        event = wire.pb.DisplayEvent(
            task_id=self.stdout.task_id, engine_id=self.conn.engine_id, data=data, metadata_json=metadata_json
        )
        size = event.ByteSize()
        if size > MAX_DISPLAY_BYTES:
            raise ValueError(
                f"display: a bundle of {size} bytes is more than pxgrpc sends as display data "
                f"({MAX_DISPLAY_BYTES} bytes, {sorted(data)}); save it to a file, or return or push it"
            )
        self.conn.emit(wire.pb.TaskEvent(display=event))

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        # An interrupt that lands between tasks must not kill the engine.
        if self._in_user_code:
            raise KeyboardInterrupt

    def serve(self, register_timeout: float = 30.0) -> None:
        """Register, then run tasks until the controller says stop or goes away."""
        signal.signal(signal.SIGINT, self._on_sigint)
        self.conn.start()
        warm_up()  # (while the registration is on its way)
        wait_registered(self.conn, register_timeout)
        sys.stdout, sys.stderr = self.stdout, self.stderr
        try:
            while (item := self.tasks.get()) is not None:
                self._run(item)
        finally:
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        if self.conn.failure is not None:
            log.error("lost the controller: %s", self.conn.failure)

    def _run(self, item: WorkItem) -> None:
        task = item.task
        self.stdout.task_id = self.stderr.task_id = self.tasks.running = item.task_id
        on_demand = self._on_demand
        try:
            if item.blobs is not None:
                blobs = item.blobs.result()
            else:
                blobs, on_demand.task = on_demand, task
        except Exception as exc:  # noqa: BLE001 - the task fails, the engine goes on
            self._send(task, Outcome(error=remote_exception(exc)))
            return
        self._in_user_code = True
        try:
            outcome = self.kernel.run(task.action, blobs)
        finally:
            self._in_user_code = False
            self.tasks.running = None
            if on_demand.task is not None:  # (let go of the task and its blobs: see `OnDemand`)
                on_demand.task = None
                if on_demand:
                    on_demand.clear()
        del blobs, item
        if self.tasks.stopped and outcome.error is not None and outcome.error.ename == "KeyboardInterrupt":
            # (Not the user's interrupt: the engine stops, its controller gone. Should the
            # result still reach the client, on a lane, it says so.)
            outcome.error = wire.pb.RemoteException(
                ename="EngineError",
                evalue=f"engine {self.conn.engine_id} stopped while the task ran (its controller is gone)",
            )
            self._send(task, outcome, wire.TASK_ENGINE_DIED)
            return
        self._send(task, outcome)

    def run_at_once(self, lane: EngineLane, task: wire.pb.Task) -> bool:
        """(Main thread, reading a lane with nothing queued.) Run a lane's task the moment it is
        read, and answer it, when it is one that needs none of `_run`'s machinery: a push of
        arrays on shared memory (`Kernel.push_shared`), an engine's share of a push to many.
        It runs no user code (nothing to interrupt, no output). False for any other task."""
        started = time.time()
        try:
            replaced = self.kernel.push_shared(task)
        except Exception as exc:  # noqa: BLE001 - (nothing is bound then) the usual way says why
            log.warning("task %s: not answered at once (%s)", task.task_id, exc)
            return False
        if replaced is None:
            return False
        blobtransfer.sources["task"] += len(task.action.push.namespace)
        answered_at_once["push"] += 1
        # (Output of the replaced values' `__del__`, freed after the answer, is the push's.)
        self.stdout.task_id = self.stderr.task_id = task.task_id
        event = wire.pb.TaskEvent()
        result = event.result
        result.task_id = task.task_id
        result.engine_id = self.conn.engine_id
        result.started = started
        result.completed = time.time()
        result.value.null_value.SetInParent()
        mapped = self._reaper.take(replaced) if replaced else None
        assert self.conn.direct is not None
        self.conn.direct.answer(lane, task, event)
        if mapped:
            self._reaper.free(mapped)
        return True

    def _send(
        self, task: wire.pb.Task, outcome: Outcome, status: wire.pb.TaskStatus.ValueType | None = None
    ) -> None:
        if self.stdout.pending:
            self.stdout.send()
        if self.stderr.pending:
            self.stderr.send()
        event = wire.pb.TaskEvent()
        result = event.result
        result.task_id = task.task_id
        result.engine_id = self.conn.engine_id
        result.execution_count = outcome.execution_count
        result.started = outcome.started
        result.completed = outcome.completed or outcome.started
        upload = None
        if outcome.error is None and outcome.value is None:
            result.value.null_value.SetInParent()  # (what `wire.encode(None)` gives, in short)
        elif outcome.error is None:
            try:
                value, blob = wire.encode(outcome.value, task.encoding)
            except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable result: report it
                outcome.error = remote_exception(exc)
            else:
                result.value.CopyFrom(value)
                if blob is not None:
                    result.blob_ids.append(blob.blob_id)
                    upload = self.conn.offer(blob) if task.direct_results else self.conn.upload(blob)
        if outcome.error is not None:
            result.status = wire.TASK_ERROR if status is None else status
            result.error.CopyFrom(outcome.error)
        if outcome.execute_result is not None:
            result.execute_result.data.update(outcome.execute_result)
            result.execute_result.execution_count = outcome.execution_count
        mapped = self._reaper.take(outcome.replaced) if outcome.replaced else None
        self.conn.emit(event, release=outcome.replaced or None)
        outcome.replaced = []
        if mapped:
            self._reaper.free(mapped)
        if upload is not None:
            # The blob views the user's live objects: finish sending before running more code.
            upload.result()
