"""The client's connection to the controller, run by an asyncio loop in a background thread.

Views hand it plain actions (`Execute`, `Apply`, `Push`, `Pull`) and a listener; it encodes them,
batches them onto the session stream, streams large values as blobs, and calls the listener
back (in its own thread) with output and with decoded `TaskOutcome`s. Nothing above this module
sees a protobuf message.

The actions are in `actions.py`, the queue of submits and the uploads of their blobs in
`submit.py` (`Submitter`, which `Transport` extends), and the decoding of results in `outcome.py`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import grpc

from pxgrpc import blobstream, diagnose, security, wire
from pxgrpc.client.datapath import DataPath
from pxgrpc.client.errors import AuthenticationError, PxConnectionError, TLSError
from pxgrpc.client.outcome import TaskListener, TaskOutcome, decode_outcome
from pxgrpc.client.submit import Submitter
from pxgrpc.memory import reuse_freed_memory

log = logging.getLogger(__name__)
T = TypeVar("T")


def connection_error(exc: grpc.RpcError, url: str) -> PxConnectionError:
    """A gRPC failure as an error that says what happened and what to do."""
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    name = code.name if code is not None else ""
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return AuthenticationError(
            f"the controller at {url} refused our credentials: {details}. "
            "Use the token from its connection file",
            name,
        )
    if code == grpc.StatusCode.UNAVAILABLE:
        return PxConnectionError(
            f"cannot reach the controller at {url}: {details}. Is it running? (`pxgrpc cluster status`)", name
        )
    return PxConnectionError(f"controller at {url}: {name} {details}", name)


def diagnosed_error(found: diagnose.Diagnosis, code: str) -> PxConnectionError:
    """The client error for a diagnosed connection failure (credentials, TLS, or reachability)."""
    if found.cause in diagnose.CREDENTIAL_CAUSES:
        return AuthenticationError(found.message, code, str(found.cause))
    if found.cause in diagnose.TLS_CAUSES:
        return TLSError(found.message, code, str(found.cause))
    return PxConnectionError(found.message, code, str(found.cause))


class Transport(Submitter):
    """One client's link to one controller."""

    def __init__(self, info: security.ConnectionInfo, timeout: float = 10.0) -> None:
        if not info.token:
            raise AuthenticationError(
                "this connection file holds no client token (it is the engine-only copy, "
                "controller-engine.json): connect with the controller's controller.json",
                cause=str(diagnose.FailureCause.WRONG_TOKEN),
            )
        self.info = info
        self.url = info.url
        # Opt-in here: allocator settings would affect all of the user's own process.
        reuse_freed_memory(default="chunks")
        self._metadata = security.auth_metadata(info.token)
        self._tasks: set[asyncio.Future[None]] = set()
        self._listeners: dict[str, TaskListener] = {}
        # The live engines as the controller last told us (see `engine_ids`).
        self._engines_generation = -1
        self._engine_ids: tuple[int, ...] = ()
        self._datapath = DataPath(self._metadata, info.channel_credentials())
        # Tasks whose result blobs wait on the engine's data endpoint: task id -> its url.
        self._direct_results: dict[str, str] = {}
        self._lock = threading.Lock()
        super().__init__()  # the queue of submits
        self.failure: PxConnectionError | None = None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="pxgrpc-client-io", daemon=True)
        self._thread.start()
        try:
            # Room for the first call, plus a look at the server when it fails (diagnose.probe_server).
            self._run(self._connect(timeout), timeout + 2 * diagnose.PROBE_TIMEOUT + 1)
        except BaseException:
            self.close()
            raise

    # --- thread plumbing --------------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if self.loop.is_closed():
            coro.close()
            raise PxConnectionError("this client is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise PxConnectionError(
                f"no answer from the controller at {self.url} within {timeout} s"
            ) from None

    def _background(self, coro: Coroutine[Any, Any, None]) -> asyncio.Future[None]:
        """Run `coro` in the loop, holding a reference until it is done (asyncio keeps only weak ones)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def close(self) -> None:
        """Close the connection; pending tasks fail with PxConnectionError."""
        if self.loop.is_closed():
            return
        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(5)
            except (concurrent.futures.TimeoutError, RuntimeError):
                log.warning("closing the client's connection took too long")
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
        if not self.loop.is_running():
            self.loop.close()

    async def _close(self) -> None:
        self._fail_all(PxConnectionError("the client was closed"))
        if self._session is not None:
            self._session.cancel()
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self._datapath.close()
        await self.channel.close()
        # gRPC's own tasks for the closed calls end on the next turns of the loop: let them, so
        # that closing the loop does not destroy them pending (a warning at interpreter exit).
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        if others:
            await asyncio.wait(others, timeout=1.0)

    # --- connecting -------------------------------------------------------------------------

    async def _connect(self, timeout: float) -> None:
        options = security.channel_options(self.info.tls_server_name)
        self._session: grpc.aio.StreamStreamCall[Any, Any] | None = None
        creds = self.info.channel_credentials()
        if creds is not None:
            self.channel = grpc.aio.secure_channel(self.url, creds, options=options)
        else:
            self.channel = grpc.aio.insecure_channel(self.url, options=options)
        self._stubs = _methods(self.channel)
        try:
            request = wire.pb.ListEnginesRequest()
            self._note_engines(
                await self._stubs["ListEngines"](request, metadata=self._metadata, timeout=timeout)
            )
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
            target = diagnose.ConnectTarget.of(self.info, role="client")
            found = await asyncio.to_thread(diagnose.diagnose, code, details, target)
            raise diagnosed_error(found, code.name) from None
        self._wakeup = asyncio.Event()
        self._session = self._stubs["Session"](self._requests(), metadata=self._metadata)
        self._reader = asyncio.ensure_future(self._read_session(self._session))

    async def _read_session(self, call: grpc.aio.StreamStreamCall[Any, Any]) -> None:
        try:
            async for message in call:
                if message.HasField("engines"):
                    self._note_engines(message.engines)
                for event in message.events:
                    self._dispatch(event)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self._fail_all(connection_error(exc, self.url))
                return
        except Exception as exc:
            log.exception("client session reader failed")
            self._fail_all(PxConnectionError(f"client session failed: {exc!r}"))
            return
        self._fail_all(PxConnectionError(f"the controller at {self.url} closed the session"))

    def _fail_all(self, error: PxConnectionError) -> None:
        self.failure = self.failure or error
        listeners, self._listeners = self._listeners, {}
        self._direct_results.clear()
        for task_id, listener in listeners.items():
            listener.on_result(TaskOutcome(task_id=task_id, engine_id=-1, status="error", error=error))

    # --- results ----------------------------------------------------------------------------

    def _dispatch(self, event: wire.pb.TaskEvent) -> None:
        kind = event.WhichOneof("kind")
        if kind == "output":
            out = event.output
            listener = self._listeners.get(out.task_id)
            if listener is not None:
                stream = "stderr" if out.stream == wire.STDERR else "stdout"
                listener.on_output(out.task_id, out.engine_id, stream, out.text)
        elif kind == "display":
            disp = event.display
            listener = self._listeners.get(disp.task_id)
            if listener is not None:
                listener.on_display(disp.task_id, disp.engine_id, dict(disp.data), disp.metadata_json)
        elif kind == "result":
            result = event.result
            listener = self._listeners.pop(result.task_id, None)
            url = self._direct_results.pop(result.task_id, None) if self._direct_results else None
            if listener is None:
                return
            received = time.time()
            if result.blob_ids:
                self._background(self._deliver_with_blobs(result, listener, url, received))
            else:
                listener.on_result(decode_outcome(result, {}, received))

    async def _deliver_with_blobs(
        self, result: wire.pb.TaskResult, listener: TaskListener, url: str | None, received: float
    ) -> None:
        try:
            if url is not None:
                blobs = {b: await self._datapath.download(url, b) for b in result.blob_ids}
            else:
                blobs = {b: await self._download(b) for b in result.blob_ids}
            outcome = decode_outcome(result, blobs, received)
        except (grpc.RpcError, wire.DecodingError) as exc:
            err = (
                connection_error(exc, self.url)
                if isinstance(exc, grpc.RpcError)
                else PxConnectionError(str(exc))
            )
            outcome = TaskOutcome(result.task_id, result.engine_id, "error", error=err)
        listener.on_result(outcome)

    async def _download(self, blob_id: str) -> blobstream.IncomingBlob:
        call = self._stubs["Download"](wire.pb.DownloadRequest(blob_id=blob_id), metadata=self._metadata)
        return await blobstream.receive(call, blob_id)

    # --- control calls ----------------------------------------------------------------------

    def call(self, method: str, request: Any, timeout: float = 30.0) -> Any:
        """A unary call on the Controller service, with errors made readable."""
        return self._run(self._call(method, request, timeout), timeout + 5)

    async def _call(self, method: str, request: Any, timeout: float) -> Any:
        try:
            return await self._stubs[method](request, metadata=self._metadata, timeout=timeout)
        except grpc.RpcError as exc:
            raise connection_error(exc, self.url) from None

    def _note_engines(self, reply: wire.pb.ListEnginesReply) -> None:
        """Remember the live engines, unless we already know a newer list."""
        with self._lock:
            if reply.generation >= self._engines_generation:
                self._engines_generation = reply.generation
                self._engine_ids = tuple(e.engine_id for e in reply.engines)
                self._datapath.set_urls({e.engine_id: e.data_url for e in reply.engines})

    def engine_ids(self) -> list[int]:
        """The live engines as last heard (the controller tells every change on the session
        stream): no round trip, unlike `list_engines`."""
        return list(self._engine_ids)

    def list_engines(self) -> list[dict[str, Any]]:
        reply = self.call("ListEngines", wire.pb.ListEnginesRequest())
        self._note_engines(reply)
        states = {wire.ENGINE_IDLE: "idle", wire.ENGINE_BUSY: "busy", wire.ENGINE_DEAD: "dead"}
        return [
            {
                "id": e.engine_id,
                "hostname": e.hostname,
                "pid": e.pid,
                "state": states.get(e.state, "?"),
                "queue": e.queue,
                "completed": e.completed,
                "registered": e.registered,
                "python": e.python_version,
                "data_url": e.data_url,
            }
            for e in reply.engines
        ]

    def abort(self, task_ids: Sequence[str], targets: Sequence[int] = ()) -> list[str]:
        request = wire.pb.AbortRequest(
            task_ids=list(task_ids), targets=wire.pb.Targets(engine_ids=list(targets))
        )
        return list(self.call("Abort", request).aborted)

    def interrupt(self, targets: Sequence[int], signal_number: int = 0) -> list[int]:
        """Signal the engines of `targets` that run a task (0: SIGINT); the ones signalled."""
        request = wire.pb.InterruptRequest(
            targets=wire.pb.Targets(engine_ids=list(targets)), signal_number=signal_number
        )
        return list(self.call("Interrupt", request).engine_ids)

    def queue_status(self, targets: Sequence[int], verbose: bool = False) -> dict[int | str, Any]:
        request = wire.pb.QueueStatusRequest(
            targets=wire.pb.Targets(engine_ids=list(targets)), verbose=verbose
        )
        reply = self.call("QueueStatus", request)
        status: dict[int | str, Any] = {}
        for e in reply.engines:
            if verbose:
                status[e.engine_id] = {
                    "queue": list(e.queued_task_ids),
                    "completed": e.completed,
                    "tasks": e.tasks,
                }
            else:
                status[e.engine_id] = {"queue": e.queue, "completed": e.completed, "tasks": e.tasks}
        status["unassigned"] = reply.unassigned
        return status

    def shutdown(self, targets: Sequence[int], controller: bool) -> list[int]:
        request = wire.pb.ShutdownRequest(
            targets=wire.pb.Targets(engine_ids=list(targets)), controller=controller
        )
        return list(self.call("Shutdown", request).engine_ids)


def _methods(channel: grpc.aio.Channel) -> dict[str, Any]:
    """Callables for the Controller service; blobs travel as raw bytes."""
    svc = f"/{wire.CONTROLLER_SERVICE}/"
    pb = wire.pb

    def unary(name: str, req: Any, rep: Any) -> Any:
        return channel.unary_unary(
            svc + name, request_serializer=req.SerializeToString, response_deserializer=rep.FromString
        )

    return {
        "ListEngines": unary("ListEngines", pb.ListEnginesRequest, pb.ListEnginesReply),
        "Abort": unary("Abort", pb.AbortRequest, pb.AbortReply),
        "Interrupt": unary("Interrupt", pb.InterruptRequest, pb.InterruptReply),
        "QueueStatus": unary("QueueStatus", pb.QueueStatusRequest, pb.QueueStatusReply),
        "Shutdown": unary("Shutdown", pb.ShutdownRequest, pb.ShutdownReply),
        "Session": channel.stream_stream(
            svc + "Session",
            request_serializer=pb.SessionRequest.SerializeToString,
            response_deserializer=pb.SessionEvent.FromString,
        ),
        "Upload": channel.stream_unary(
            svc + "Upload", request_serializer=None, response_deserializer=pb.UploadReply.FromString
        ),
        "Download": channel.unary_stream(
            svc + "Download",
            request_serializer=pb.DownloadRequest.SerializeToString,
            response_deserializer=None,
        ),
    }
