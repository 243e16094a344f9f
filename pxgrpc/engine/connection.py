"""The engine's link to the controller, run by an asyncio loop in a background thread.

It registers, holds the work stream open, downloads the blobs a task needs before the task is
handed to the main thread, uploads result blobs, and sends output, results and heartbeats up
the stream in batches.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import queue
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc

from pxgrpc import blobstream, diagnose, identity, versions, wire
from pxgrpc.engine import blobtransfer
from pxgrpc.engine.datapath import DataEndpoint, offers_data, start_data_endpoint
from pxgrpc.engine.directwork import DirectWork
from pxgrpc.engine.outbox import Outbox, aborted_event
from pxgrpc.loopthread import LoopThread
from pxgrpc.security import certs
from pxgrpc.security.connection_file import ConnectionInfo
from pxgrpc.security.credentials import channel_options
from pxgrpc.security.tokens import auth_metadata

log = logging.getLogger(__name__)


@dataclass
class WorkItem:
    """A task for the main thread, with the blobs it needs (ready when `blobs` resolves; None
    when the task needs none)."""

    task: wire.pb.Task
    blobs: concurrent.futures.Future[wire.BlobMap] | None = None


SHUTDOWN = None
#: Seconds a task may keep running after the controller is gone before the engine exits anyway.
EXIT_GRACE = 3.0
#: Results sent this recently are sent again after a reconnect: they may have gone down with
#: the old stream (the client keeps the first copy of each).
RESEND_WINDOW = 30.0
#: The longest pause between two attempts to reach a lost controller.
RECONNECT_BACKOFF_CAP = 2.0


class ReconnectFailed(Exception):
    """The controller stayed away longer than the engine's reconnect timeout."""


class EngineConnection:
    """Everything the engine says to and hears from the controller."""

    def __init__(
        self,
        info: ConnectionInfo,
        work: queue.SimpleQueue[WorkItem | None],
        connect_timeout: float = 30.0,
        reconnect_timeout: float = 300.0,
    ) -> None:
        self.info = info
        #: Seconds to keep trying to reach the controller before giving up.
        self.connect_timeout = connect_timeout
        #: Seconds to keep trying to reach the controller again once it was lost (the engine
        #: keeps its namespace meanwhile), before exiting.
        self.reconnect_timeout = reconnect_timeout
        # Results recently written to the work stream: (when, event), resent after a reconnect.
        self._sent_results: deque[tuple[float, wire.pb.TaskEvent]] = deque(maxlen=1024)
        # Grows with every work stream: the messages of a lost one stop taking events.
        self._stream_number = 0
        self.work = work
        self.io = LoopThread("pxgrpc-engine-io")
        self.engine_id = -1
        #: The engine id to ask for (its MPI rank), or None for the next free one.
        self.requested_id: int | None = None
        #: A supervisor reports how this process ends (`pxgrpc-engine --restart`).
        self.supervised = False
        # Tasks handed to the main thread that it has not started: an abort can still take them.
        self._queued: dict[str, WorkItem] = {}
        self._queue_lock = threading.Lock()
        self.running_task: str | None = None
        self.registered = threading.Event()
        self.failure: BaseException | None = None
        self._outbox = Outbox(self.io)
        #: The tasks clients hand this engine directly (with a data endpoint).
        self.direct: DirectWork | None = None
        #: The data endpoint, when this engine offers one (see `datapath.offers_data`).
        self.data: DataEndpoint | None = None
        #: The host (name or address) the data endpoint listens on and is advertised at; empty:
        #: 127.0.0.1 next to a loopback controller, else this host's address towards the controller.
        self.data_host = os.environ.get("PXGRPC_DATA_HOST", "")
        self.metadata = auth_metadata(info.engine_token)
        self._main_thread = threading.main_thread().ident

    # --- thread plumbing --------------------------------------------------------------------

    def start(self) -> None:
        """Start the I/O thread: register, then hold the work stream until the controller ends it."""
        self.io.start(self._main(), on_exit=self._ended)

    def _ended(self, failure: BaseException | None) -> None:
        """The I/O thread's last act: report its failure to the main thread, which exits."""
        if failure is not None:
            self.failure = failure
        self.registered.set()
        self.work.put(SHUTDOWN)
        self._stop_running_task()

    def _stop_running_task(self) -> None:
        """Without a controller nobody can collect results: stop the user's code, then the process."""
        if self.running_task is None or self._main_thread is None:
            return
        log.warning("lost the controller while task %s runs: interrupting it", self.running_task)
        signal.pthread_kill(self._main_thread, signal.SIGINT)
        timer = threading.Timer(EXIT_GRACE, os._exit, args=(3,))
        timer.daemon = True
        timer.start()

    def emit(self, event: wire.pb.TaskEvent, release: object = None) -> None:
        """Queue an event for the controller (from any thread).

        Events queued before the I/O thread gets round to sending travel in one message: the
        I/O thread is woken once per batch, not once per event. `release` is dropped once the
        event is sent (objects whose freeing would hold up the reply, such as a replaced list).
        Events of tasks a client sent directly go back to it on its stream.
        """
        if self.direct is not None and self.direct.route(event):
            return
        self._outbox.put(event, release)

    def schedule(self, delay: float, callback: Callable[[], None]) -> None:
        """Run `callback` in the I/O thread after `delay` seconds (from any thread)."""
        self.io.call_later(delay, callback)

    def upload(self, blob: blobstream.OutgoingBlob) -> concurrent.futures.Future[None]:
        """Start sending a result blob; the future resolves when the controller has it."""
        return self.io.submit(blobtransfer.upload(self, blob))

    # --- the conversation -------------------------------------------------------------------

    def _channel(self) -> grpc.aio.Channel:
        options = channel_options(self.info.tls_server_name)
        creds = self.info.channel_credentials()
        if creds is not None:
            return grpc.aio.secure_channel(self.info.url, creds, options=options)
        return grpc.aio.insecure_channel(self.info.url, options=options)

    async def _use_data_certificate(self, reply: wire.pb.RegisterReply) -> None:
        """Put the certificate the controller signed in place; without one a TLS endpoint is
        useless (clients could not trust it, and the controller does not publish it)."""
        if self.data is None or self.data.tls is None:
            return
        if reply.data_cert_pem and (self.info.token or reply.client_token_sha256):
            self.data.accept_token_sha256(reply.client_token_sha256)
            self.data.tls.install(reply.data_cert_pem)
            log.info("data endpoint at %s (TLS)", self.data.url)
            return
        log.info("the controller signs no data endpoint certificate: bulk data goes through it")
        data, self.data = self.data, None
        await data.stop()

    def offer(self, blob: blobstream.OutgoingBlob) -> concurrent.futures.Future[None]:
        """Keep a result blob for its client's download from the data endpoint (when there is a data endpoint;
        else upload it to the controller). The future resolves when it is gone."""
        if self.data is None:
            return self.upload(blob)
        return self.data.offer(blob)

    async def _main(self) -> None:
        self._outbox.start()
        if offers_data(self.info):
            direct = DirectWork(self.io, self.accept, self._outbox.notify_direct, self._outbox.put)
            try:
                self.data = await start_data_endpoint(self.info, self.data_host, direct.Tasks)
                self.direct = direct
            except Exception as exc:  # noqa: BLE001 - the controller's blobs work without it
                log.warning("no data endpoint: %s", exc)
                self.data = None
        try:
            await self._converse()
        finally:
            if self.data is not None:
                await self.data.stop()

    async def _converse(self) -> None:
        async with self._channel() as channel:
            self.channel = channel
            reply = await self._register(channel)
            await self._use_data_certificate(reply)
            self.engine_id = reply.engine_id
            identity.set_engine_id(reply.engine_id)
            self.heartbeat = reply.heartbeat_interval or 1.0
            self.registered.set()
            log.info("registered as engine %d", self.engine_id)
            while not await self._work(channel, reply):
                reply = await self._reconnect(channel)

    async def _work(self, channel: grpc.aio.Channel, reply: wire.pb.RegisterReply) -> bool:
        """Hold the work stream; True when the controller says stop, False when it is lost."""
        work = channel.stream_stream(
            f"/{wire.ENGINE_SERVICE}/Work",
            request_serializer=wire.pb.EngineMessage.SerializeToString,
            response_deserializer=wire.pb.EngineCommand.FromString,
        )
        self._stream_number += 1
        call = work(self._messages(reply, self._stream_number), metadata=self.metadata)
        try:
            async for command in call:
                if self._handle(command):
                    call.cancel()
                    return True
        except grpc.aio.AioRpcError as exc:
            why = f"{exc.code().name}: {diagnose.short(exc.details() or '')}"
        else:
            why = "it ended the work stream"
        call.cancel()
        self._stream_number += 1  # (events wait for the next stream)
        if self._outbox.wakeup is not None:
            self._outbox.wakeup.set()
        log.warning(
            "engine %d lost the controller at %s (%s): reconnecting for up to %.0f s, namespace kept",
            self.engine_id,
            self.info.url,
            why,
            self.reconnect_timeout,
        )
        return False

    async def _reconnect(self, channel: grpc.aio.Channel) -> wire.pb.RegisterReply:
        """Register again under this engine's id, with capped exponential backoff, holding on to
        the tasks and results of before; ReconnectFailed after `reconnect_timeout`."""
        self.requested_id = self.engine_id
        try:
            reply = await self._register(channel, rejoin=True)
        except diagnose.ConnectFailure as exc:
            raise ReconnectFailed(
                f"engine {self.engine_id} gave up reconnecting to the controller at {self.info.url} "
                f"after {self.reconnect_timeout:.0f} s (--reconnect-timeout): exiting. Last problem: {exc}"
            ) from None
        cutoff = time.monotonic() - RESEND_WINDOW
        resend = [event for sent, event in self._sent_results if sent >= cutoff]
        self._sent_results.clear()
        self._outbox.resend(resend)
        log.warning("engine %d is back with the controller at %s", self.engine_id, self.info.url)
        return reply

    def _held_task_ids(self) -> list[str]:
        """Tasks this engine holds: queued, running, or with a result still to (re)send."""
        with self._queue_lock:
            held = set(self._queued)
        if self.running_task is not None:
            held.add(self.running_task)
        held |= self._outbox.result_task_ids()
        held |= {e.result.task_id for _, e in self._sent_results}
        return sorted(held)

    async def _register(self, channel: grpc.aio.Channel, rejoin: bool = False) -> wire.pb.RegisterReply:
        """Register with the controller. Retry while it cannot be reached (it may be starting)
        until `connect_timeout` (`reconnect_timeout` when it was lost: `rejoin`); fail at once,
        with a diagnosis, on TLS or token problems."""
        register = channel.unary_unary(
            f"/{wire.ENGINE_SERVICE}/Register",
            request_serializer=wire.pb.RegisterRequest.SerializeToString,
            response_deserializer=wire.pb.RegisterReply.FromString,
        )
        mine = versions.engine_versions()
        request = wire.pb.RegisterRequest(
            hostname=socket.gethostname(),
            pid=os.getpid(),
            python_version=mine.python,
            protocol_version=mine.protocol,
            cloudpickle_version=mine.cloudpickle,
            data_url=self.data.url if self.data is not None else "",
            host_key=self.data.host_key if self.data is not None else "",
            supervised=self.supervised,
        )
        if self.requested_id is not None:
            request.requested_id = self.requested_id
        if rejoin:
            request.held_task_ids.extend(self._held_task_ids())
        if self.data is not None and self.data.tls is not None:
            request.data_csr_pem = self.data.tls.csr_pem
            if self.info.token:  # else the controller signs for the address we call from only
                request.data_csr_mac = certs.csr_mac(self.data.tls.csr_pem, self.info.token)
        target = diagnose.ConnectTarget.of(self.info, role="engine")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.reconnect_timeout if rejoin else self.connect_timeout)
        delay, cap = 0.05, RECONNECT_BACKOFF_CAP if rejoin else 1.0
        retry_codes = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
        if rejoin:  # (our old registration, until the controller notices it is gone)
            retry_codes.add(grpc.StatusCode.ALREADY_EXISTS)
        while True:
            remaining = max(deadline - loop.time(), 0.5)
            try:
                reply: wire.pb.RegisterReply = await register(
                    request, metadata=self.metadata, timeout=remaining
                )
                return reply
            except grpc.aio.AioRpcError as exc:
                code, details = exc.code(), exc.details() or ""
            retry = loop.time() + delay < deadline
            if not retry or code not in retry_codes:
                break
            if not rejoin:  # (a controller we had goes on being worth waiting for)
                quick = diagnose.diagnose(code, details, target, probe=False)
                if not quick.retryable:
                    break
            log.info("controller at %s not reachable yet (%s)", self.info.url, diagnose.short(details))
            await asyncio.sleep(delay)
            delay = min(delay * 2, cap)
        if (
            self.data is not None
            and not request.data_csr_mac
            and code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT)
            and details.startswith(("data_url:", "data_csr_pem:"))
        ):
            # Without the client token the controller only signs for the address it sees us
            # call from (not, say, a name set with --data-host): go on without an endpoint.
            log.warning("no data endpoint (%s): bulk data goes through the controller", details)
            data, self.data = self.data, None
            await data.stop()
            return await self._register(channel, rejoin)
        found = await asyncio.to_thread(diagnose.diagnose, code, details, target)
        raise diagnose.ConnectFailure(found)

    async def _messages(
        self, reply: wire.pb.RegisterReply, number: int
    ) -> AsyncIterator[wire.pb.EngineMessage]:
        """The engine's side of work stream `number`: hello, then batched events and heartbeats
        (until a newer stream replaces it)."""
        wakeup = self._outbox.wakeup
        assert wakeup is not None
        yield wire.pb.EngineMessage(engine_id=reply.engine_id, registration_token=reply.registration_token)
        # One timer for the heartbeats, re-armed when it fires (not one per wait: a busy engine
        # waits once per batch): it wakes the sender for an empty message after a heartbeat
        # interval with nothing sent.
        loop = asyncio.get_running_loop()
        last_sent = loop.time()
        timer: asyncio.TimerHandle | None = None

        def heartbeat_due() -> None:
            nonlocal timer
            idle = loop.time() - last_sent
            if idle >= self.heartbeat:
                wakeup.set()
                idle = 0.0
            timer = loop.call_later(self.heartbeat - idle, heartbeat_due)

        timer = loop.call_later(self.heartbeat, heartbeat_due)
        try:
            while number == self._stream_number:
                if not self._outbox:
                    wakeup.clear()
                    await wakeup.wait()
                    if number != self._stream_number:
                        return
                message, release = self._outbox.take()
                last_sent = loop.time()
                now = time.monotonic()
                self._sent_results.extend(
                    (now, e) for e in message.events if e.WhichOneof("kind") == "result"
                )
                yield message
                del message, release  # (the message is written: free what its sender left behind)
        finally:
            if timer is not None:
                timer.cancel()

    def _handle(self, command: wire.pb.EngineCommand) -> bool:
        """Act on a command; True when the engine must stop."""
        for task in command.tasks:
            self.accept(task)
        for task_id in command.abort_task_ids:
            self._abort_queued(task_id)
        signal_number = command.interrupt_signal or signal.SIGINT
        # (An idle engine has nothing to interrupt; other signals go to it all the same.)
        idle_sigint = self.running_task is None and signal_number == signal.SIGINT
        if command.interrupt and not idle_sigint and self._main_thread is not None:
            self._interrupt_running_task(signal_number)
        return command.shutdown

    def accept(self, task: wire.pb.Task) -> None:
        """Queue a task for the main thread (in the I/O thread), its blobs fetched meanwhile."""
        item = WorkItem(task)
        refs = wire.blob_ids_of_action(task.action)
        if refs:
            item.blobs = concurrent.futures.Future()
            self.io.background(blobtransfer.fetch(self, refs, item.blobs, task.shared_blobs))
        with self._queue_lock:
            self._queued[task.task_id] = item
        self.work.put(item)

    def _interrupt_running_task(self, signal_number: int) -> None:
        """SIGINT raises KeyboardInterrupt in the user's code; any other signal goes to the whole
        process, with its usual effect (SIGTERM and SIGKILL end the engine)."""
        assert self._main_thread is not None
        if signal_number == signal.SIGINT:
            signal.pthread_kill(self._main_thread, signal.SIGINT)
            return
        log.warning("task %s: an interrupt sends this engine signal %d", self.running_task, signal_number)
        try:
            os.kill(os.getpid(), signal_number)
        except (OSError, ValueError) as exc:  # e.g. a number that is no signal on this host
            log.error("could not send signal %d to this engine: %s", signal_number, exc)

    def _abort_queued(self, task_id: str) -> None:
        """Answer a task that has not started as aborted, at once (even while another task
        runs); a task already started (or finished) goes on."""
        with self._queue_lock:
            item = self._queued.pop(task_id, None)
        if item is not None:
            self.emit(aborted_event(task_id, self.engine_id))

    def claim(self, item: WorkItem) -> bool:
        """The main thread is about to run `item`: False if it was aborted meanwhile."""
        with self._queue_lock:
            return self._queued.pop(item.task.task_id, None) is not None


def wait_registered(conn: EngineConnection, timeout: float) -> None:
    """Block until the engine has an id, or raise what went wrong."""
    if not conn.registered.wait(timeout):
        raise TimeoutError(f"no answer from the controller at {conn.info.url} within {timeout:.0f} s")
    if conn.failure is not None:
        raise conn.failure
