"""DirectView tasks on an engine's task lane (`pxgrpc.lane`): what `DirectLink` does over
`EngineData.Tasks`, over a Unix socket to an engine on this host, without gRPC.

The thread that submits a task writes it into the socket itself (no hand-over to the I/O
thread); the I/O thread reads the engine's events as the socket has them. Should the lane not
connect (say the client runs in another network namespace), `DirectLinks` uses the engine's
`Tasks` stream instead.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from google.protobuf.message import DecodeError

from pxgrpc import lane, sharedmem, wire
from pxgrpc.client.datapath import CONNECT_TIMEOUT, DataPath
from pxgrpc.loopthread import LoopThread

if TYPE_CHECKING:
    from pxgrpc.client.directlinks import Link

log = logging.getLogger(__name__)


class LinkState:
    """What every way of sending an engine tasks directly has (`DirectLink`, `LaneLink`):
    `ready` once connected; `broken` after a failure (`DirectLinks` replaces it once the engine's
    endpoint changes or comes back: `revival`)."""

    def __init__(self, engine_id: int, url: str, io: LoopThread) -> None:
        self.engine_id = engine_id
        #: The engine's data endpoint (what names the engine: `SubmitTask.sent_to`).
        self.url = url
        self.ready = False
        self.broken = False
        #: `DataPath.revivals` of the endpoint when the link was made (a link made before the
        #: endpoint came back is replaced).
        self.revival = 0
        self._io = io


class LaneLink(LinkState):
    """One task lane to one engine: `unreachable` when it did not connect (nothing was sent on it)."""

    def __init__(self, engine_id: int, url: str, path: str, io: LoopThread) -> None:
        super().__init__(engine_id, url, io)
        self.path = path
        self.unreachable = False
        #: The engine can map this process's shared-memory files (`LaneEvents.shared_memory`).
        self.shares_memory = False
        self._writer: lane.LaneWriter | None = None
        self._on_broken: Callable[[Link, str], None] | None = None

    def queue(self, task: bytes) -> bool:
        """Send a task (a serialized `Task`) to the engine now (from any thread, once `ready`);
        nothing to wake. On a lane that closed meanwhile the task is handled with the lane's
        others (`on_broken`)."""
        assert self._writer is not None
        if not self._writer.send(lane.one_frame(task)) and self._on_broken is not None:
            self._io.call_soon(self._on_broken, self, "the lane closed as a task was sent")
        return False

    def wake(self) -> None:
        """(Nothing waits to be sent: `queue` sent it.)"""

    async def run(
        self,
        datapath: DataPath,
        on_event: Callable[[wire.pb.TaskEvent, int], None],
        on_broken: Callable[[Link, str], None],
    ) -> None:
        """Connect and say hello, then read the engine's events until the lane closes (each to
        `on_event(event, engine_id)`)."""
        self._on_broken = on_broken
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, lane.address(self.path)), CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            sock.close()
            log.info(
                "engine %d's task lane does not connect (%s): its Tasks stream is used", self.engine_id, exc
            )
            self.unreachable = self.broken = True
            return
        writer = lane.LaneWriter(sock, self._io)
        writer.send(lane.frame(wire.pb.LaneHello(token=datapath.token, pid=os.getpid())))
        reader = lane.FrameReader()
        closed: asyncio.Future[str] = loop.create_future()

        def end(why: str) -> None:
            if not closed.done():
                closed.set_result(why)

        def readable() -> None:
            try:
                bodies = lane.read_available(sock, reader)
            except lane.FrameError as exc:
                end(f"the engine broke the lane's framing ({exc})")
                return
            for body in bodies or ():
                try:
                    message = wire.pb.LaneEvents.FromString(body)
                except DecodeError as exc:
                    end(f"a message from the engine is not LaneEvents ({exc})")
                    return
                if message.error:
                    end(f"the engine refused the lane: {message.error}")
                    return
                if not self.ready:  # (the engine's answer to the hello)
                    self.shares_memory = message.shared_memory
                    self._writer = writer
                    self.ready = True
                for event in message.events:
                    on_event(event, self.engine_id)
            if bodies is None:
                end("the engine closed the lane")

        fd = sock.fileno()
        loop.add_reader(fd, readable)
        try:
            why = await closed
        finally:
            loop.remove_reader(fd)
            writer.close()
            sock.close()
            self.ready = False
        self.broken = True
        on_broken(self, why)


class SharedFiles:
    """The shared-memory files of tasks sent on lanes (`Task.shared_blobs`): each stays open
    until every task naming it has its result (from any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_task: dict[str, sharedmem.SharedFile] = {}
        self._users: dict[int, int] = {}

    def hold(self, shared: sharedmem.SharedFile, task_ids: Sequence[str]) -> None:
        """Keep `shared` open until these tasks are `done`."""
        with self._lock:
            self._users[id(shared)] = self._users.get(id(shared), 0) + len(task_ids)
            for task_id in task_ids:
                self._by_task[task_id] = shared

    def done(self, task_id: str) -> None:
        """A task's result came (or it will never come): its file may go."""
        if not self._by_task:
            return
        with self._lock:
            shared = self._by_task.pop(task_id, None)
            if shared is None:
                return
            left = self._users[id(shared)] = self._users[id(shared)] - 1
            if left:
                return
            del self._users[id(shared)]
        shared.close()
