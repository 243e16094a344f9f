"""The client's connection to the controller, run by an asyncio loop in a background thread.

Views hand it plain actions (`Execute`, `Apply`, `Push`, `Pull`) and a listener; it encodes them,
batches them onto the session stream, streams large values as blobs, and calls the listener
back (in its own thread) with output and with decoded `TaskOutcome`s. Nothing above this module
sees a protobuf message.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import itertools
import logging
import os
import threading
import time
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any, TypeVar

import grpc

from pxgrpc import blobstream, diagnose, security, wire
from pxgrpc.client.actions import Action, encode_action
from pxgrpc.client.direct import DirectData, receive_blob
from pxgrpc.client.errors import AuthenticationError, PxConnectionError, TLSError
from pxgrpc.client.outcome import TaskListener, TaskOutcome, decode_outcome
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


_task_counter = itertools.count()


class Transport:
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
        self._prefix = f"{os.getpid():x}-{id(self):x}-"
        self._tasks: set[asyncio.Future[None]] = set()
        self._listeners: dict[str, TaskListener] = {}
        # The live engines as the controller last told us (see `engine_ids`).
        self._engines_generation = -1
        self._engine_ids: tuple[int, ...] = ()
        self._outgoing: list[wire.pb.SubmitTask] = []
        # Submits that must wait (in order) until their blob is on the engine: (submit, upload).
        self._gates: collections.deque[tuple[wire.pb.SubmitTask, concurrent.futures.Future[None]]] = (
            collections.deque()
        )
        self._direct = DirectData(self._metadata)
        # Tasks whose result blobs wait on the engine's data endpoint: task id -> its url.
        self._direct_results: dict[str, str] = {}
        self._relayed: set[str] = set()
        self._flush_scheduled = False
        self._lock = threading.Lock()
        # Notified (with _lock held) whenever the session takes submits from _outgoing.
        self._taken = threading.Condition(self._lock)
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
        await self._direct.close()
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
        if self.info.uses_tls:
            ca = self.info.tls_ca.encode() if self.info.tls_ca else None
            creds = security.channel_credentials(ca, self.info.client_cert())
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

    async def _requests(self) -> Any:
        """The session's requests: everything submitted since the last one, in one message."""
        while True:
            with self._lock:
                tasks = self._take_ready()
            if tasks:
                yield wire.pb.SessionRequest(tasks=tasks)
                continue
            self._wakeup.clear()
            await self._wakeup.wait()

    def _take_ready(self) -> list[wire.pb.SubmitTask]:
        """(With the lock held.) The submits that may go: all of them, up to the first one whose
        blob is still on its way to the engine (order of submission is kept)."""
        self._flush_scheduled = False
        gates = self._gates
        while gates and gates[0][1].done():
            gates.popleft()
        if not gates:
            tasks, self._outgoing = self._outgoing, []
            self._taken.notify_all()
            return tasks
        blocked = gates[0][0]
        cut = next(i for i, submit in enumerate(self._outgoing) if submit is blocked)
        tasks, self._outgoing = self._outgoing[:cut], self._outgoing[cut:]
        if tasks:
            self._taken.notify_all()
        return tasks

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

    # --- submitting -------------------------------------------------------------------------

    def new_task_ids(self, n: int) -> list[str]:
        """Fresh task ids (listeners are built with them before the tasks are submitted)."""
        return [f"{self._prefix}{next(_task_counter)}" for _ in range(n)]

    def submit(
        self,
        task_ids: Sequence[str],
        action: Action,
        targets: Sequence[int | None],
        listener: TaskListener,
        retries: int = 0,
        encoding: wire.pb.ResultEncoding.ValueType = wire.ENCODING_PICKLE,
    ) -> None:
        """Run `action` on each target (None: load-balanced) as the tasks `task_ids`."""
        template = wire.pb.SubmitTask(encoding=encoding, retries=retries)
        blob = encode_action(action, template.action)
        submits = []
        for task_id, target in zip(task_ids, targets, strict=True):
            submit = wire.pb.SubmitTask()
            submit.CopyFrom(template)
            submits.append(_address(submit, task_id, target))
        # One blob for every target: straight to each engine only if all of them can take it.
        direct = blob is not None and all(self._direct.url_for(t) for t in targets)
        if blob is not None and not direct:
            # Before queueing: the loop thread may send the submits the moment they are queued.
            for submit in submits:
                submit.blob_ids.append(blob.blob_id)
        self._enqueue(task_ids, submits, [blob if direct else None] * len(submits), listener)
        if blob is not None and not direct:
            self._start_relay(blob)

    def submit_each(
        self,
        task_ids: Sequence[str],
        items: Iterable[tuple[Action, int | None]],
        listener: TaskListener,
        retries: int = 0,
    ) -> None:
        """Run a different action on each target (scatter, map) as the tasks `task_ids`
        (`items` may be a generator, to build each action only when it is its turn).

        Small tasks are queued together; a task with a large payload is queued as soon as it
        is encoded, so that its upload (and its engine) starts while the next one is encoded.
        Encoding (pickling) holds the GIL, which the upload and the session also need now and
        then: so before encoding the next payload, this waits until the task is on its way (its
        direct upload done, its submit taken by the session), for at most twice as long as
        encoding its payload took. The engine then starts on it while the next one is encoded.
        """
        cache: dict[int, wire.pb.Value] = {}
        submits: list[wire.pb.SubmitTask] = []
        direct_blobs: list[blobstream.OutgoingBlob | None] = []
        relayed = []
        start = 0
        for i, (task_id, (action, target)) in enumerate(zip(task_ids, items, strict=True)):
            began = time.perf_counter()
            submit = _address(wire.pb.SubmitTask(retries=retries), task_id, target)
            blob = encode_action(action, submit.action, cache)
            submits.append(submit)
            if blob is not None and not self._direct.url_for(target):
                submit.blob_ids.append(blob.blob_id)
                relayed.append(blob)
                direct_blobs.append(None)
            else:
                direct_blobs.append(blob)
            if blob is not None and i + 1 < len(task_ids):
                gates = self._enqueue(task_ids[start : i + 1], submits, direct_blobs, listener)
                for blob in relayed:
                    self._start_relay(blob)
                self._wait_sent(gates, submits, time.perf_counter() + 2 * (time.perf_counter() - began))
                start, submits, direct_blobs, relayed = i + 1, [], [], []
        self._enqueue(task_ids[start:], submits, direct_blobs, listener)
        for blob in relayed:
            self._start_relay(blob)

    def _enqueue(
        self,
        ids: Sequence[str],
        submits: list[wire.pb.SubmitTask],
        direct_blobs: list[blobstream.OutgoingBlob | None],
        listener: TaskListener,
    ) -> list[concurrent.futures.Future[None]]:
        """Queue submits for the session stream. A submit with a direct blob waits (and so do
        the ones after it) until the blob is on its engine; direct tasks fetch their result
        blobs from the engine when it has a reachable data endpoint. Returns the uploads."""
        if self.failure is not None:
            raise self.failure
        gates = []
        direct_results = []
        for submit, blob in zip(submits, direct_blobs, strict=True):
            url = self._direct.url_for(submit.engine_id) if not submit.load_balanced else None
            if url is None:
                continue
            submit.direct_results = True
            direct_results.append((submit.task_id, url))
            if blob is not None:
                gate = asyncio.run_coroutine_threadsafe(self._send_direct(submit, blob, url), self.loop)
                gate.add_done_callback(self._gate_opened)
                gates.append((submit, gate))
        with self._lock:
            for task_id in ids:
                self._listeners[task_id] = listener
            self._direct_results.update(direct_results)
            self._outgoing.extend(submits)
            self._gates.extend(gates)
            schedule = not self._flush_scheduled
            self._flush_scheduled = True
        if schedule:
            self.loop.call_soon_threadsafe(self._wakeup.set)
        return [gate for _, gate in gates]

    def _wait_sent(
        self,
        gates: list[concurrent.futures.Future[None]],
        submits: list[wire.pb.SubmitTask],
        deadline: float,
    ) -> None:
        """Wait until these uploads are done and these submits taken by the session, or the deadline."""
        concurrent.futures.wait(gates, timeout=max(0.0, deadline - time.perf_counter()))
        with self._taken:
            self._taken.wait_for(
                lambda: not any(queued is submit for queued in self._outgoing for submit in submits),
                timeout=max(0.0, deadline - time.perf_counter()),
            )

    def _gate_opened(self, gate: concurrent.futures.Future[None]) -> None:
        """A direct upload is over: the submits held behind it may go."""
        self.loop.call_soon_threadsafe(self._wakeup.set)

    async def _send_direct(self, submit: wire.pb.SubmitTask, blob: blobstream.OutgoingBlob, url: str) -> None:
        """Upload a task's blob to its engine; on failure send it through the controller."""
        try:
            await self._direct.upload(url, blob)
        except grpc.RpcError as exc:
            self._direct.give_up(url, f"{exc.code().name}: {exc.details()}")
            submit.direct_results = False
            submit.blob_ids.append(blob.blob_id)
            self._start_relay(blob)

    def _start_relay(self, blob: blobstream.OutgoingBlob) -> None:
        """Upload a blob to the controller (once), from any thread."""
        if threading.get_ident() != self._thread.ident:
            self.loop.call_soon_threadsafe(self._start_relay, blob)
            return
        if blob.blob_id not in self._relayed:
            self._relayed.add(blob.blob_id)
            task = self._background(self._upload(blob))
            task.add_done_callback(lambda _: self._relayed.discard(blob.blob_id))

    def _background(self, coro: Coroutine[Any, Any, None]) -> asyncio.Future[None]:
        """Run `coro` in the loop, holding a reference until it is done (asyncio keeps only weak ones)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _upload(self, blob: blobstream.OutgoingBlob) -> None:
        try:
            await self._stubs["Upload"](blob.raw_messages(), metadata=self._metadata)
        except grpc.RpcError as exc:
            log.error("upload of %d bytes failed: %s", blob.size, exc.details())

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
                blobs = {b: await self._direct.download(url, b) for b in result.blob_ids}
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
        return await receive_blob(blob_id, call)

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
                self._direct.set_urls({e.engine_id: e.data_url for e in reply.engines})

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

    def interrupt(self, targets: Sequence[int]) -> list[int]:
        reply = self.call(
            "Interrupt", wire.pb.InterruptRequest(targets=wire.pb.Targets(engine_ids=list(targets)))
        )
        return list(reply.engine_ids)

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


def _address(submit: wire.pb.SubmitTask, task_id: str, target: int | None) -> wire.pb.SubmitTask:
    """Fill in who runs the task (None: the controller picks, load-balanced)."""
    submit.task_id = task_id
    if target is None:
        submit.engine_id = -1
        submit.load_balanced = True
    else:
        submit.engine_id = target
    return submit


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
