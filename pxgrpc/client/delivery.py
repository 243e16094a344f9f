"""What comes back for the client's tasks, on the session stream or a direct link, delivered to
their listeners (the `AsyncResult`s) in the transport's I/O thread: output, displays, published
data and results, a result's blobs fetched first (from its engine's data endpoint or the
controller), the parts of a gather assembled into one array. Also what becomes of the tasks in
flight when a direct link breaks, an engine leaves, or the connection is lost for good.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pxgrpc import blobstream, wire
from pxgrpc.client.assemble import Assembly, Held, Region
from pxgrpc.client.directlinks import Link, fail_later
from pxgrpc.client.errors import PxConnectionError
from pxgrpc.client.outcomes import decode_outcome
from pxgrpc.client.rpcerrors import ENGINE, map_rpc_errors
from pxgrpc.client.tasks import TaskListener, TaskOutcome

if TYPE_CHECKING:
    from pxgrpc.client.calls import ControllerCalls
    from pxgrpc.client.datapath import DataPath
    from pxgrpc.client.inflight import InFlight
    from pxgrpc.client.submit import Submitter
    from pxgrpc.loopthread import LoopThread

log = logging.getLogger(__name__)


class Delivery:
    """Task events to their listeners (in the I/O thread, except `expect_assembly` and
    `forget_assembly`)."""

    def __init__(
        self,
        io: LoopThread,
        in_flight: InFlight,
        submitter: Submitter,
        datapath: DataPath,
        calls: ControllerCalls,
        url: str,
    ) -> None:
        self._io = io
        self._in_flight = in_flight
        self._submitter = submitter
        self._datapath = datapath
        self._calls = calls
        self._url = url
        #: The gathers whose parts are held until all are in (task id -> its assembly).
        self._assemblies: dict[str, Assembly] = {}

    def expect_assembly(self, task_ids: Sequence[str]) -> None:
        """These tasks' array results are to be downloaded into one array (a gather)."""
        self._assemblies.update(dict.fromkeys(task_ids, Assembly(task_ids)))

    def forget_assembly(self, task_ids: Sequence[str]) -> None:
        """These tasks were not submitted after all."""
        for task_id in task_ids:
            self._assemblies.pop(task_id, None)

    def dispatch(self, event: wire.pb.TaskEvent) -> None:
        """One event from the session stream (or a direct link), to its task's listener."""
        kind = event.WhichOneof("kind")
        if kind == "output":
            out = event.output
            listener = self._in_flight.listener(out.task_id)
            if listener is not None:
                stream = "stderr" if out.stream == wire.STDERR else "stdout"
                listener.on_output(out.task_id, out.engine_id, stream, out.text)
        elif kind == "display":
            disp = event.display
            listener = self._in_flight.listener(disp.task_id)
            if listener is not None:
                listener.on_display(disp.task_id, disp.engine_id, dict(disp.data), disp.metadata_json)
        elif kind == "data":
            published = event.data
            listener = self._in_flight.listener(published.task_id)
            if listener is not None:
                try:
                    values = {name: wire.decode(v) for name, v in published.data.items()}
                except Exception as exc:  # noqa: BLE001 - e.g. a class this client cannot import
                    log.warning("task %s published data this client cannot load: %s", published.task_id, exc)
                    return
                listener.on_data(published.task_id, published.engine_id, values)
        elif kind == "result":
            self._result(event.result)

    def _result(self, result: wire.pb.TaskResult) -> None:
        task_id = result.task_id
        self._submitter.task_done(task_id)
        listener, url = self._in_flight.finish(task_id)
        if listener is None:
            return
        received = time.time()
        assembly = self._assemblies.pop(task_id, None) if self._assemblies else None
        if assembly is not None:
            if assembly.add(Held(result, listener, url, received)):
                self._io.background(
                    assembly.deliver(self._fetch, decode_outcome, self._datapath.shares_memory)
                )
        elif result.blob_ids:
            self._io.background(self._deliver_with_blobs(result, listener, url, received))
        else:
            listener.on_result(decode_outcome(result, {}, received))

    def direct_event(self, event: wire.pb.TaskEvent, engine_id: int) -> None:
        """An event on engine `engine_id`'s direct link (which leaves it to the client to say
        whose event it is): its task id is "<session>/<task id>"; ours is the second part."""
        kind = event.WhichOneof("kind")
        if kind is None:
            return
        inner = getattr(event, kind)
        inner.engine_id = engine_id
        inner.task_id = inner.task_id.partition("/")[2]
        if kind == "result":
            self._result(inner)
        else:
            self.dispatch(event)

    def direct_link_broken(self, link: Link, why: str) -> None:
        """A direct link failed: later tasks for its engine are relayed. The engine may have
        died (the controller then answers its tasks, saying how) or only the link may be gone
        (the engine then sends their results through the controller): the tasks wait for
        that, and fail after `directlinks.ORPHAN_GRACE` seconds should nothing come (the engine
        died before the controller heard of them)."""
        # (Worth a warning only when tasks were on it: an idle link gone, say with its engine
        # or cluster stopped, costs nothing; the next task for that engine is relayed.)
        busy = bool(self._submitter.order.direct_tasks_on(link.engine_id))
        log.log(
            logging.WARNING if busy else logging.INFO,
            "direct task stream to engine %d at %s failed (%s)",
            link.engine_id,
            link.url,
            why,
        )
        self.orphan_direct(link.engine_id, f"its direct task stream at {link.url} failed ({why})")

    def orphan_direct(self, engine_id: int, why: str) -> None:
        """The direct tasks on an engine may never answer (in the I/O thread)."""
        tasks = self._submitter.order.direct_tasks_on(engine_id)
        for task_id in tasks:
            self._submitter.task_done(task_id)  # (the engine has them queued before any later one)
        if tasks:
            fail_later(self._io, tasks, engine_id, why, lambda t: self._in_flight.finish(t)[0])

    def fail_all(self, error: PxConnectionError) -> None:
        """The connection is lost for good (or closed): every task in flight fails with `error`."""
        assemblies, self._assemblies = self._assemblies, {}
        for assembly in {id(a): a for a in assemblies.values()}.values():
            assembly.fail(error)
        for task_id, listener in self._in_flight.fail_all(error).items():
            self._submitter.shared_files.done(task_id)  # (a lane's shared file goes with its tasks)
            listener.on_result(TaskOutcome(task_id=task_id, engine_id=-1, status="error", error=error))

    async def _deliver_with_blobs(
        self, result: wire.pb.TaskResult, listener: TaskListener, url: str | None, received: float
    ) -> None:
        try:
            with _errors_of(url, self._url):
                if url is not None:
                    blobs = {b: await self._datapath.download(url, b) for b in result.blob_ids}
                else:
                    blobs = {b: await self._calls.download(b) for b in result.blob_ids}
            outcome = decode_outcome(result, blobs, received)
        except (PxConnectionError, wire.DecodingError) as exc:
            err = exc if isinstance(exc, PxConnectionError) else PxConnectionError(str(exc))
            outcome = TaskOutcome(result.task_id, result.engine_id, "error", error=err)
        listener.on_result(outcome)

    async def _fetch(
        self, url: str | None, blob_id: str, into: memoryview | None, region: Region | None = None
    ) -> blobstream.IncomingBlob:
        """A result blob, from its engine's data endpoint (url) or the controller."""
        with _errors_of(url, self._url):
            if url is not None:
                return await self._datapath.download(url, blob_id, into, region)
            return await self._calls.download(blob_id, into)


def _errors_of(engine_url: str | None, controller_url: str) -> contextlib.AbstractContextManager[None]:
    """gRPC failures of a download as pxgrpc errors naming its peer: the engine's data endpoint
    (`engine_url`) or, when None, the controller."""
    if engine_url is not None:
        return map_rpc_errors(engine_url, ENGINE)
    return map_rpc_errors(controller_url)
