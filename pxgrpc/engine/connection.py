"""The engine's link to the controller, run by an asyncio loop in a background thread.

It registers (`registration`), holds the work stream open (`workstream`), downloads the blobs a
task needs before the task is handed to the main thread (`taskqueue`), uploads result blobs, and
sends output, results and heartbeats up the stream in batches (`outbox`).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
from collections.abc import Callable

import grpc

from pxgrpc import blobstream, diagnose, identity, lane, wire
from pxgrpc.engine import blobtransfer, registration
from pxgrpc.engine.datapath import DataEndpoint, offers_data, start_data_endpoint
from pxgrpc.engine.directwork import DirectWork
from pxgrpc.engine.lanes import EngineLane, LaneServer
from pxgrpc.engine.outbox import Outbox
from pxgrpc.engine.taskqueue import TaskQueue
from pxgrpc.engine.workstream import WorkStream
from pxgrpc.loopthread import LoopThread
from pxgrpc.security.connection_file import ConnectionInfo
from pxgrpc.security.credentials import channel_options
from pxgrpc.security.tokens import auth_metadata

log = logging.getLogger(__name__)


class ReconnectFailed(Exception):
    """The controller stayed away longer than the engine's reconnect timeout."""


class EngineConnection:
    """Everything the engine says to and hears from the controller."""

    def __init__(
        self,
        info: ConnectionInfo,
        tasks: TaskQueue,
        connect_timeout: float = 30.0,
        reconnect_timeout: float = 300.0,
    ) -> None:
        self.info = info
        #: Seconds to keep trying to reach the controller before giving up.
        self.connect_timeout = connect_timeout
        #: Seconds to keep trying to reach the controller again once it was lost (the engine
        #: keeps its namespace meanwhile), before exiting.
        self.reconnect_timeout = reconnect_timeout
        self.tasks = tasks
        self.io = LoopThread("pxgrpc-engine-io")
        self.engine_id = -1
        #: The engine id to ask for (its MPI rank), or None for the next free one.
        self.requested_id: int | None = None
        #: A supervisor reports how this process ends (`pxgrpc-engine --restart`).
        self.supervised = False
        self.registered = threading.Event()
        self.failure: BaseException | None = None
        self._outbox = Outbox(self.io)
        #: The tasks clients hand this engine directly (with a data endpoint).
        self.direct: DirectWork | None = None
        #: What runs a lane's task the moment it is read (`DirectWork.at_once`; the engine's).
        self.at_once: Callable[[EngineLane, wire.pb.Task], bool] | None = None
        #: The data endpoint, when this engine offers one (see `datapath.offers_data`).
        self.data: DataEndpoint | None = None
        #: The task lane clients on this host may use (with a data endpoint), or None.
        self.lanes: LaneServer | None = None
        #: The host (name or address) the data endpoint listens on and is advertised at; empty:
        #: 127.0.0.1 next to a loopback controller, else this host's address towards the controller.
        self.data_host = os.environ.get("PXGRPC_DATA_HOST", "")
        self.metadata = auth_metadata(info.engine_token)
        self._stream = WorkStream(self._outbox, tasks, self.accept, self.emit, self.metadata)

    # --- thread plumbing --------------------------------------------------------------------

    def start(self) -> None:
        """Start the I/O thread: register, then hold the work stream until the controller ends it."""
        self.io.start(self._main(), on_exit=self._ended)

    def _ended(self, failure: BaseException | None) -> None:
        """The I/O thread's last act: report its failure to the main thread, which exits."""
        if failure is not None:
            self.failure = failure
        self.registered.set()
        self.tasks.shutdown()
        self.tasks.stop_running()

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

    def offer(self, blob: blobstream.OutgoingBlob) -> concurrent.futures.Future[None]:
        """Keep a result blob for its client's download from the data endpoint (when there is a data endpoint;
        else upload it to the controller). The future resolves when it is gone."""
        if self.data is None:
            return self.upload(blob)
        return self.data.offer(blob)

    def accept(self, task: wire.pb.Task) -> None:
        """Queue a task for the main thread (in the I/O thread), its blobs fetched meanwhile.
        (A lane's task, read by the main thread, gets each blob as its values are decoded:
        `blob_now`.)"""
        self.tasks.accept(task, self._fetch)

    def _fetch(
        self, task: wire.pb.Task, blob_ids: set[str], ready: concurrent.futures.Future[wire.BlobMap]
    ) -> None:
        self.io.background(blobtransfer.fetch(self, blob_ids, ready, task.shared_blobs))

    def blob_now(self, task: wire.pb.Task, blob_id: str) -> blobstream.IncomingBlob:
        """(Main thread.) One blob of a task: mapped here if the task names a shared copy of it
        that can be mapped, else fetched by the I/O thread while the main thread waits."""
        mapped = blobtransfer.map_named(task.shared_blobs, blob_id)
        if mapped is not None:
            return mapped
        ready: concurrent.futures.Future[wire.BlobMap] = concurrent.futures.Future()
        self.io.call_soon(self._fetch, task, {blob_id}, ready)
        return ready.result()[blob_id]

    # --- the conversation -------------------------------------------------------------------

    def _channel(self) -> grpc.aio.Channel:
        options = channel_options(self.info.tls_server_name)
        creds = self.info.channel_credentials()
        if creds is not None:
            return grpc.aio.secure_channel(self.info.url, creds, options=options)
        return grpc.aio.insecure_channel(self.info.url, options=options)

    async def _main(self) -> None:
        self._outbox.start()
        if offers_data(self.info):
            direct = DirectWork(
                self.io,
                self.accept,
                self.tasks,
                self._outbox,
                lambda: self.engine_id,
            )
            direct.at_once = self.at_once
            try:
                self.data = await start_data_endpoint(self.info, self.data_host, direct.Tasks)
                self.direct = direct
            except Exception as exc:  # noqa: BLE001 - the controller's blobs work without it
                log.warning("no data endpoint: %s", exc)
                self.data = None
            if self.data is not None and lane.enabled():
                self._open_lanes(direct, self.data)
        try:
            await self._converse()
        finally:
            if self.lanes is not None:
                self.lanes.stop()
            if self.data is not None:
                await self.data.stop()

    def _open_lanes(self, direct: DirectWork, data: DataEndpoint) -> None:
        self.tasks.lanes = direct
        lanes = LaneServer(self.io, data.check_token, self.tasks.add_lane)
        try:
            lanes.start()
        except OSError as exc:  # (gRPC's Tasks stream does the same)
            log.warning("no task lane: %s", exc)
            return
        self.lanes = lanes

    async def _converse(self) -> None:
        async with self._channel() as channel:
            self.channel = channel
            reply = await registration.register(self, channel)
            await registration.use_data_certificate(self, reply)
            self.engine_id = reply.engine_id
            identity.set_engine_id(reply.engine_id)
            self.registered.set()
            log.info("registered as engine %d", self.engine_id)
            while (why := await self._stream.hold(channel, reply)) is not None:
                log.warning(
                    "engine %d lost the controller at %s (%s): reconnecting for up to %.0f s, namespace kept",
                    self.engine_id,
                    self.info.url,
                    why,
                    self.reconnect_timeout,
                )
                reply = await self._reconnect(channel)

    async def _reconnect(self, channel: grpc.aio.Channel) -> wire.pb.RegisterReply:
        """Register again under this engine's id, with capped exponential backoff, holding on to
        the tasks and results of before; ReconnectFailed after `reconnect_timeout`."""
        self.requested_id = self.engine_id
        try:
            reply = await registration.register(self, channel, self._held_task_ids())
        except diagnose.ConnectFailure as exc:
            raise ReconnectFailed(
                f"engine {self.engine_id} gave up reconnecting to the controller at {self.info.url} "
                f"after {self.reconnect_timeout:.0f} s (--reconnect-timeout): exiting. Last problem: {exc}"
            ) from None
        self._stream.resend_recent()
        log.warning("engine %d is back with the controller at %s", self.engine_id, self.info.url)
        return reply

    def _held_task_ids(self) -> list[str]:
        """Tasks this engine holds: queued, running, or with a result still to (re)send."""
        held = self.tasks.held() | self._outbox.result_task_ids() | self._stream.sent_result_ids()
        return sorted(held)


def wait_registered(conn: EngineConnection, timeout: float) -> None:
    """Block until the engine has an id, or raise what went wrong."""
    if not conn.registered.wait(timeout):
        raise TimeoutError(f"no answer from the controller at {conn.info.url} within {timeout:.0f} s")
    if conn.failure is not None:
        raise conn.failure
