"""The engine's task lanes (see `pxgrpc.lane`): clients on this host hand it tasks on a Unix
socket, which the main thread reads itself while it waits for work.

The I/O thread listens and checks each new connection's `LaneHello` (the client token), then
hands the lane to the main thread (`TaskQueue.add_lane`), which reads its tasks whenever it has
nothing else to run, and writes their results (`DirectWork.route`, as for a `Tasks` stream).
Tasks that come while a task runs wait in the socket until it ends; one whose abort came
meanwhile is answered as aborted when it is read (`TaskQueue.abort`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import struct
from collections.abc import Callable

from google.protobuf.message import DecodeError

from pxgrpc import lane, sharedmem, wire
from pxgrpc.loopthread import LoopThread

log = logging.getLogger(__name__)

#: struct ucred (SO_PEERCRED): pid, uid, gid.
_CREDENTIALS = struct.Struct("3i")


def shares_memory_with(conn: socket.socket, pid: int) -> bool:
    """Whether this engine can map the shared-memory files of the client at the other end of
    `conn`, which says its pid is `pid`: it runs as our user (or we are root) and in our PID
    namespace (the kernel's account of the peer's pid is the same number)."""
    if not pid or not sharedmem.enabled():
        return False
    try:
        peer = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size)
    except OSError:
        return False
    peer_pid, peer_uid, _ = _CREDENTIALS.unpack(peer)
    return peer_pid == pid and (peer_uid == os.getuid() or os.getuid() == 0)


class EngineLane:
    """One client's lane: the main thread reads its tasks (`read`); events of its tasks go back
    on it from any thread (`put`)."""

    def __init__(
        self, sock: socket.socket, reader: lane.FrameReader, early: list[bytes], io: LoopThread
    ) -> None:
        self.sock = sock
        self._reader = reader
        #: Frames that came with the hello, not read yet.
        self._early = early
        self.writer = lane.LaneWriter(sock, io)
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> list[wire.pb.Task] | None:
        """(Main thread.) The tasks that came; None once the client has gone (or broke the
        protocol: it is then told why and the lane closes)."""
        try:
            bodies = lane.read_available(self.sock, self._reader) if not self._early else self._early
        except lane.FrameError as exc:
            self.refuse(f"the task lane's framing is broken: {exc}")
            return None
        self._early = []
        if bodies is None:
            return None
        tasks: list[wire.pb.Task] = []
        try:
            for body in bodies:
                tasks.extend(wire.pb.DirectTasks.FromString(body).tasks)
        except DecodeError as exc:
            self.refuse(f"a message on the task lane is not a DirectTasks ({exc})")
            return None
        return tasks

    def put(self, event: wire.pb.TaskEvent) -> bool:
        """Send an event back (any thread); False once the lane is closed."""
        return self.writer.send(lane.event_frame(event))

    def refuse(self, why: str) -> None:
        """Tell the client why the lane ends (it then closes)."""
        log.warning("task lane closed: %s", why)
        self.writer.send(lane.frame(wire.pb.LaneEvents(error=why)))

    def close(self) -> None:
        self.closed = True
        self.writer.close()
        self.sock.close()


class LaneServer:
    """The listening socket (in the I/O thread): checks each new lane's hello, then hands the
    lane over (`hand_over`, called in the I/O thread)."""

    def __init__(
        self,
        io: LoopThread,
        check_token: Callable[[str], str | None],
        hand_over: Callable[[EngineLane], None],
    ) -> None:
        self._io = io
        self._check_token = check_token
        self._hand_over = hand_over
        self._sock: socket.socket | None = None
        #: The lane's path for `RegisterRequest.lane_path` ("@..." : the abstract namespace).
        self.path = ""

    def start(self) -> str:
        """Listen; the path clients connect to."""
        path = f"@pxgrpc-lane-{secrets.token_hex(12)}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(lane.address(path))
            sock.listen(128)
            sock.setblocking(False)
            self._io.loop.add_reader(sock.fileno(), self._accept)
        except OSError:
            sock.close()
            raise
        self._sock, self.path = sock, path
        return path

    def stop(self) -> None:
        if self._sock is not None:
            self._io.loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def _accept(self) -> None:
        assert self._sock is not None
        while True:
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("task lane: accept failed: %s", exc)
                return
            conn.setblocking(False)
            self._io.background(self._greet(conn))

    async def _greet(self, conn: socket.socket) -> None:
        """Read the hello; hand the lane over, or tell the client why not."""
        loop = asyncio.get_running_loop()
        reader = lane.FrameReader()
        bodies: list[bytes] = []
        try:
            async with asyncio.timeout(lane.HELLO_TIMEOUT):
                while not bodies:
                    data = await loop.sock_recv(conn, lane.READ_SIZE)
                    if not data:
                        conn.close()
                        return
                    bodies = reader.feed(data)
        except (TimeoutError, OSError, lane.FrameError) as exc:
            log.warning("task lane: no hello (%s)", exc or "none within the timeout")
            conn.close()
            return
        new = EngineLane(conn, reader, bodies[1:], self._io)
        hello = wire.pb.LaneHello()
        try:
            hello.ParseFromString(bodies[0])
            problem = self._check_token(hello.token)
        except DecodeError:
            problem = "the first message on a task lane must be a LaneHello"
        if problem is not None:
            new.refuse(problem)
            await asyncio.sleep(0.05)  # (let the reason reach the client first)
            new.close()
            return
        accepted = wire.pb.LaneEvents(shared_memory=shares_memory_with(conn, hello.pid))
        new.writer.send(lane.frame(accepted))
        self._hand_over(new)
