"""The client's transport: a strict point of cut-off between the Python API and the network.

Above it, the `Client` (and through it the views and `AsyncResult`) hands down plain records
(`pxgrpc.client.tasks`: a `Job` and its task ids, a listener) and gets back decoded
`TaskOutcome`s and output, called in the transport's I/O thread. Below it: the channel to the
controller, the session stream that carries submits and task events, the engines' data
endpoints (`DataPath`), and gRPC errors, turned into pxgrpc errors in one table
(`rpcerrors.STATUS_ERRORS`). Only the `Client` holds a `Transport`.

What it owns: its I/O thread (`LoopThread`), the typed calls of the Controller service
(`ControllerCalls`), the tasks in flight (`InFlight`), the `Submitter` that sends work on its way
(on the session stream, or on `DirectLinks` straight to engines) and the `Delivery` of what comes
back to the listeners.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import pathlib
import secrets
import signal
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import grpc

from pxgrpc import diagnose, versions, wire
from pxgrpc.client.calls import ControllerCalls, Rep, Req, Unary, as_targets, engine_dicts, queue_status_dict
from pxgrpc.client.datapath import DataPath
from pxgrpc.client.delivery import Delivery
from pxgrpc.client.directlinks import DirectLinks
from pxgrpc.client.errors import (
    AuthenticationError,
    PxConnectionError,
)
from pxgrpc.client.inflight import InFlight
from pxgrpc.client.reconnect import LOST, StreamEnd, redial
from pxgrpc.client.rpcerrors import diagnosed_error, map_rpc_errors, rpc_error
from pxgrpc.client.submit import Submitter
from pxgrpc.client.tasks import Job, TaskListener
from pxgrpc.loopthread import LoopClosed, LoopThread
from pxgrpc.memory import reuse_freed_memory
from pxgrpc.security.connection_file import ConnectionInfo
from pxgrpc.security.credentials import channel_options
from pxgrpc.security.tokens import auth_metadata

log = logging.getLogger(__name__)
T = TypeVar("T")


#: Seconds a client that was refused at its first call waits for a connection before it says so
#: (gRPC's longest reconnect backoff here, `channel_options`, and a margin).
STALE_REFUSAL_WAIT = 2.5


def _unset(*args: object) -> None:
    raise AssertionError("DirectLinks used before its delivery was set")


class Transport:
    """One client's link to one controller."""

    def __init__(
        self,
        info: ConnectionInfo,
        timeout: float = 10.0,
        reconnect_timeout: float = 120.0,
        connection_file: pathlib.Path | None = None,
    ) -> None:
        if not info.token:
            raise AuthenticationError(
                "this connection file holds no client token (it is the engine-only copy, "
                "controller-engine.json): connect with the controller's controller.json",
                cause=str(diagnose.FailureCause.WRONG_TOKEN),
            )
        self.info = info
        self.url = info.url
        #: Seconds to keep trying to reach a lost controller (pending tasks wait meanwhile).
        self.reconnect_timeout = reconnect_timeout
        # Gone (a clean stop of the controller): no use waiting for it to come back.
        self._connection_file = connection_file
        # Names the session to the controller, so that it survives a broken stream.
        self._session_id = secrets.token_hex(12)
        self._closing = False
        self._controller_stopped = False
        # Opt-in here: allocator settings would affect all of the user's own process.
        reuse_freed_memory(default="chunks")
        metadata = auth_metadata(info.token)
        self._lock = threading.Lock()
        # The live engines as the controller last told us (see `engine_ids`).
        self._engines_generation = -1
        self._engine_ids: tuple[int, ...] = ()
        self._versions = versions.EngineVersionCheck()
        self._datapath = DataPath(metadata, info.channel_credentials(), lambda *a: self.io.call_soon(*a))
        self._in_flight = InFlight()
        self._stream: grpc.aio.StreamStreamCall[Any, Any] | None = None
        # Whether a session stream is open (False while reconnecting).
        self._session_up = False
        self._reader: asyncio.Future[None] | None = None
        self.io = LoopThread("pxgrpc-client-io")
        self.io.start()
        try:
            self.channel = self._run(self._open_channel(), timeout)
            self.calls = ControllerCalls(self.channel, metadata)
            # (The links' events go to the Delivery, built on the Submitter that uses the links.)
            self._links = DirectLinks(self.io, self._datapath, _unset, _unset)
            self.submitter = Submitter(
                self.io, self.calls, self._datapath, self._in_flight, self._links, self._session_id
            )
            self._delivery = Delivery(
                self.io, self._in_flight, self.submitter, self._datapath, self.calls, self.url
            )
            self._links.on_event = self._delivery.direct_event
            self._links.on_broken = self._delivery.direct_link_broken
            # Room for the first call, plus a look at the server when it fails (diagnose.probe_server).
            self._run(self._connect(timeout), timeout + 2 * diagnose.PROBE_TIMEOUT + 1)
        except BaseException:
            self.close()
            raise

    # --- the cut-off: what the Client calls ------------------------------------------------

    def new_task_ids(self, n: int) -> list[str]:
        """Fresh task ids (listeners are built with them before the tasks are submitted)."""
        return self.submitter.new_task_ids(n)

    def submit(self, task_ids: Sequence[str], job: Job, listener: TaskListener) -> None:
        """Run `job` as the tasks `task_ids` (one per target); `listener` hears how they go."""
        if job.assemble:
            self._delivery.expect_assembly(task_ids)
        try:
            if job.each is not None:
                items = zip(job.each, job.targets, strict=True)
                self.submitter.submit_each(task_ids, items, listener, retries=job.retries)
            elif job.action is not None:
                self.submitter.submit(task_ids, job.action, job.targets, listener, retries=job.retries)
            else:
                raise ValueError(f"{job.name}: a job needs an action, or one action per target")
        except BaseException:
            if job.assemble:
                self._delivery.forget_assembly(task_ids)
            raise

    @property
    def failure(self) -> PxConnectionError | None:
        """Why the connection failed, once it has."""
        return self._in_flight.failure

    def engine_ids(self) -> list[int]:
        """The live engines as last heard (the controller tells every change on the session
        stream): no round trip, unlike `list_engines`."""
        return list(self._engine_ids)

    def list_engines(self) -> list[dict[str, Any]]:
        """The engines with their host, pid, state and counts (asks the controller)."""
        reply = self.call(self.calls.list_engines, wire.pb.ListEnginesRequest())
        self._note_engines(reply)
        return engine_dicts(reply)

    def abort(self, task_ids: Sequence[str], targets: Sequence[int] = ()) -> list[str]:
        """Drop these queued tasks (or those queued on `targets`); the ones dropped. (Direct
        tasks sent a moment ago are dropped too, once the controller hears of them, without
        being among those returned.)"""
        if targets:  # (the controller does not know of the direct tasks sent a moment ago)
            task_ids = [*task_ids, *self.submitter.unannounced(targets)]
        request = wire.pb.AbortRequest(task_ids=list(task_ids), targets=as_targets(targets))
        return list(self.call(self.calls.abort, request).aborted)

    def interrupt(
        self, targets: Sequence[int], signal_number: int = 0, include_idle: bool = False
    ) -> list[int]:
        """Signal the engines of `targets` that run a task (0: SIGINT), or all of them with
        `include_idle`; the ones signalled."""
        if signal_number in (0, signal.SIGINT) and self.submitter.unannounced(targets):
            # (The controller has not heard of direct tasks sent a moment ago, which may run
            # already; an engine that runs nothing ignores a SIGINT.)
            include_idle = True
        request = wire.pb.InterruptRequest(
            targets=as_targets(targets), signal_number=signal_number, include_idle=include_idle
        )
        return list(self.call(self.calls.interrupt, request).engine_ids)

    def queue_status(self, targets: Sequence[int], verbose: bool = False) -> dict[int | str, Any]:
        """`{engine_id: {'queue': n, 'completed': n, 'tasks': n}, 'unassigned': n}`."""
        request = wire.pb.QueueStatusRequest(targets=as_targets(targets), verbose=verbose)
        return queue_status_dict(self.call(self.calls.queue_status, request), verbose)

    def shutdown(self, targets: Sequence[int], controller: bool) -> list[int]:
        """Stop the engines of `targets` (and the controller); the engines told to stop."""
        request = wire.pb.ShutdownRequest(targets=as_targets(targets), controller=controller)
        self._controller_stopped = self._controller_stopped or controller
        return list(self.call(self.calls.shutdown, request).engine_ids)

    def call(self, method: Unary[Req, Rep], request: Req, timeout: float = 30.0) -> Rep:
        """A unary call on the Controller service, with errors made readable."""
        return self._run(self._call(method, request, timeout), timeout + 5)

    def close(self) -> None:
        """Close the connection; pending tasks fail with PxConnectionError."""
        self.io.stop(self._close())

    # --- the I/O thread -------------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        try:
            return self.io.run(coro, timeout)
        except LoopClosed:
            raise PxConnectionError("this client is closed") from None
        except concurrent.futures.TimeoutError:
            raise PxConnectionError(
                f"no answer from the controller at {self.url} within {timeout} s"
            ) from None

    async def _call(self, method: Unary[Req, Rep], request: Req, timeout: float) -> Rep:
        with map_rpc_errors(self.url):
            return await method(request, self.calls.metadata, timeout)

    async def _open_channel(self) -> grpc.aio.Channel:
        options = channel_options(self.info.tls_server_name)
        creds = self.info.channel_credentials()
        if creds is not None:
            return grpc.aio.secure_channel(self.url, creds, options=options)
        return grpc.aio.insecure_channel(self.url, options=options)

    async def _connect(self, timeout: float) -> None:
        request = wire.pb.ListEnginesRequest()
        try:
            try:
                reply = await self.calls.list_engines(request, self.calls.metadata, timeout)
            except grpc.aio.AioRpcError as first:
                if first.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                # A refusal may be stale: gRPC fails a new channel at once while its connection
                # attempts to that address (an earlier controller's port, reused since) wait out
                # their backoff. Ask once more, waiting for a connection as long as that lasts.
                try:
                    reply = await self.calls.list_engines(
                        request, self.calls.metadata, min(timeout, STALE_REFUSAL_WAIT), wait_for_ready=True
                    )
                except grpc.aio.AioRpcError:
                    raise first from None
            self._note_engines(reply)
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
            target = diagnose.ConnectTarget.of(self.info, role="client")
            found = await asyncio.to_thread(diagnose.diagnose, code, details, target)
            raise diagnosed_error(found, code.name) from None
        self._stream = self._open_session([])
        self._session_up = True
        self._reader = asyncio.ensure_future(self._read_stream(self._stream))

    def _open_session(self, resume: list[str]) -> grpc.aio.StreamStreamCall[Any, Any]:
        first = wire.pb.SessionRequest(session_id=self._session_id, resume_task_ids=resume)
        return self.calls.session(self.submitter.requests(first))

    async def _close(self) -> None:
        self._closing = True
        if hasattr(self, "_delivery"):  # (none when the connection failed: no task is in flight then)
            self._delivery.fail_all(PxConnectionError("the client was closed"))
        if self._stream is not None and self._reader is not None:
            # Half-close first: the controller then ends the session instead of keeping it for us.
            self.submitter.finish()
            await asyncio.wait([self._reader], timeout=0.2)
            self._stream.cancel()
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if hasattr(self, "_links"):
            await self._links.close()
        await self._datapath.close()
        if hasattr(self, "channel"):
            await self.channel.close()
        # gRPC's own tasks for the closed calls end on the next turns of the loop: let them, so
        # that closing the loop does not destroy them pending (a warning at interpreter exit).
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        if others:
            await asyncio.wait(others, timeout=1.0)

    # --- what comes down the session stream -----------------------------------------------

    async def _read_stream(self, call: grpc.aio.StreamStreamCall[Any, Any]) -> None:
        """Read session streams until the client closes: a stream lost with the controller (or
        the network) is replaced by a new one that resumes the session."""
        while True:
            error = await self._read_session(call)
            self._session_up = False
            self.submitter.finish()  # submits wait for the next stream, not the dead one
            if self._closing:
                return
            reconnected = await self._reconnect(error) if error.reconnect else None
            if reconnected is None:
                self._delivery.fail_all(error.error)
                return
            call = reconnected

    async def _read_session(self, call: grpc.aio.StreamStreamCall[Any, Any]) -> StreamEnd:
        try:
            async for message in call:
                if message.controller_stopping:
                    self._controller_stopped = True  # (no reconnecting to it; no warning)
                if message.HasField("engines"):
                    self._note_engines(message.engines)
                for event in message.events:
                    self._delivery.dispatch(event)
        except grpc.RpcError as exc:
            if self._controller_stopped:
                return StreamEnd(PxConnectionError(f"the controller at {self.url} was shut down"), False)
            return StreamEnd(rpc_error(exc, self.url), exc.code() in LOST)
        except Exception as exc:
            log.exception("the session stream's reader failed")
            return StreamEnd(PxConnectionError(f"the session stream failed: {exc!r}"), False)
        closed = PxConnectionError(f"the controller at {self.url} closed the session")
        return StreamEnd(closed, not self._controller_stopped)

    async def _reconnect(self, lost: StreamEnd) -> grpc.aio.StreamStreamCall[Any, Any] | None:
        """Dial the lost controller again until `reconnect_timeout`, then open a session stream
        that resumes ours; None (and `lost.error` says why) when in vain."""
        args = (self.calls, self.url, self.reconnect_timeout, self._connection_file, lost.error)
        reply = await redial(*args, lambda: self._closing)
        if not isinstance(reply, wire.pb.ListEnginesReply):
            lost.error = reply or lost.error
            return None
        with self._lock:
            self._engines_generation = -1  # a restarted controller counts from 0 again
        self._note_engines(reply)
        # Only what the lost controller may have held: a task still queued in the submitter goes
        # on the new stream after the resume, and is no loss.
        self._stream = self._open_session(self.submitter.sent_unanswered())
        self._session_up = True
        return self._stream

    def _note_engines(self, reply: wire.pb.ListEnginesReply) -> None:
        """Remember the live engines, unless we already know a newer list. The direct tasks of
        an engine that left may never answer; but not while the session is down: an engine
        missing then may only be slower to come back to a restarted controller than we are
        (should it have died, its direct link breaks and says so)."""
        with self._lock:
            if reply.generation >= self._engines_generation:
                self._engines_generation = reply.generation
                gone = set(self._engine_ids) - {e.engine_id for e in reply.engines}
                self._engine_ids = tuple(e.engine_id for e in reply.engines)
                for engine_id in gone if self._session_up else ():
                    self.io.call_soon(self._delivery.orphan_direct, engine_id, "it left the cluster")
                self._datapath.set_urls(
                    {e.engine_id: e.data_url for e in reply.engines},
                    {e.engine_id: e.host_key for e in reply.engines},
                    {e.engine_id: e.lane_path for e in reply.engines},
                )
                if hasattr(self, "_links"):
                    self._links.prepare(self._engine_ids)
                self._versions.check(reply.engines)
