"""The task lane: `EngineData.Tasks` over a Unix socket, between a client and an engine on one host.

A small task's round trip over gRPC is mostly gRPC's own threads handing each message on: in
the client (its I/O thread and gRPC's), and in the engine (gRPC's threads, its event loop, then
its main thread and back). On the lane the engine's main thread reads tasks from the socket and
writes results to it itself, and the client's caller thread writes its tasks itself: a round
trip costs a fraction, and so does each engine's share of a task sent to many engines.

The protocol is in engine.proto (`LaneHello`): frames of a 4-byte little-endian length and one
serialized protobuf message. This module has what both ends share: framing (`frame`,
`tasks_frame`, `events_frame`, `one_frame`, `FrameReader`) and `LaneWriter`, which sends frames
from any thread in order without blocking the sender. The engine's end is `pxgrpc.engine.lanes`, the
client's `pxgrpc.client.lanelink`.

Linux only (the socket is in the abstract namespace: no file to clean up, and a client in
another network namespace, which could not reach the engine's TCP endpoints either, cannot reach
it). Off with `PXGRPC_TASK_LANE=off`; DirectView tasks then use `EngineData.Tasks`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import sys
import threading
from typing import Protocol

from pxgrpc import wire
from pxgrpc.loopthread import LoopThread

#: The length prefix of a frame.
HEADER = struct.Struct("<I")
#: The largest frame either end accepts (a task's inline values are far smaller: larger values
#: travel as blobs).
MAX_FRAME = 64 << 20
#: Seconds a new connection may take to say hello.
HELLO_TIMEOUT = 10.0
#: Bytes read from the socket at a time.
READ_SIZE = 1 << 16


def enabled() -> bool:
    """Whether task lanes are used here: on Linux, unless `PXGRPC_TASK_LANE=off`."""
    wanted = os.environ.get("PXGRPC_TASK_LANE", "on").lower() not in ("off", "0", "no")
    return wanted and sys.platform == "linux"


def address(path: str) -> str | bytes:
    """The socket address of a lane path ("@name" is in the abstract namespace)."""
    return b"\0" + path[1:].encode() if path.startswith("@") else path


class FrameError(ValueError):
    """The bytes on a lane are not frames (a length over MAX_FRAME)."""


class _Message(Protocol):
    def SerializeToString(self) -> bytes: ...


def frame(message: _Message) -> bytes:
    """One message as a frame."""
    body = message.SerializeToString()
    return HEADER.pack(len(body)) + body


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def repeated_one(items: list[bytes]) -> bytes:
    """A message whose field 1 is `repeated` messages (`DirectTasks.tasks`, `LaneEvents.events`),
    serialized, given those serialized: no copy of the items into a new message."""
    return b"".join(b"\x0a" + _varint(len(item)) + item for item in items)


def one_frame(item: bytes) -> bytes:
    """A frame of such a message with one item (the usual case), given it serialized."""
    size = len(item)
    head = b"\x0a" + (bytes((size,)) if size < 0x80 else _varint(size))
    return HEADER.pack(len(head) + size) + head + item


def tasks_frame(tasks: list[wire.pb.Task]) -> bytes:
    """A `DirectTasks` frame."""
    body = repeated_one([task.SerializeToString() for task in tasks])
    return HEADER.pack(len(body)) + body


def events_frame(events: list[wire.pb.TaskEvent]) -> bytes:
    """A `LaneEvents` frame (no error)."""
    body = repeated_one([event.SerializeToString() for event in events])
    return HEADER.pack(len(body)) + body


def event_frame(event: wire.pb.TaskEvent) -> bytes:
    """A `LaneEvents` frame of one event."""
    return one_frame(event.SerializeToString())


class FrameReader:
    """Bytes as they come off a socket in; whole frames' bodies out."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Take `data`; the bodies of the frames it completes (FrameError for a bad length)."""
        buffer = self._buffer
        if buffer:
            buffer += data
            if len(buffer) < HEADER.size:
                return []
            (size,) = HEADER.unpack_from(buffer)
            if size <= MAX_FRAME and len(buffer) < HEADER.size + size:
                return []  # (a large frame comes in many reads: wait for all of it)
            data = bytes(buffer)
            buffer.clear()
        # (Usually `data` holds whole frames and nothing waits: each body is one slice of it.)
        bodies = []
        start = 0
        while len(data) - start >= HEADER.size:
            (size,) = HEADER.unpack_from(data, start)
            if size > MAX_FRAME:
                raise FrameError(f"a frame of {size} bytes (the most is {MAX_FRAME})")
            end = start + HEADER.size + size
            if end > len(data):
                break
            bodies.append(data[start + HEADER.size : end])
            start = end
        if start < len(data):
            buffer += memoryview(data)[start:]
        return bodies


def read_available(sock: socket.socket, reader: FrameReader) -> list[bytes] | None:
    """The frames a non-blocking socket has for us now; None once the peer has closed it."""
    bodies: list[bytes] = []
    while True:
        try:
            data = sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return bodies
        except OSError:
            return bodies or None
        if not data:
            return bodies or None
        bodies += reader.feed(data)
        if len(data) < READ_SIZE:
            return bodies


class LaneWriter:
    """Frames to a non-blocking socket, from any thread, in the order sent: straight into the
    socket when it takes them (the common case: no thread hand-over), else kept and written by
    the event loop of `io` as the socket drains. `send` never blocks on the peer."""

    def __init__(self, sock: socket.socket, io: LoopThread) -> None:
        self._sock = sock
        self._io = io
        self._lock = threading.Lock()
        self._pending = bytearray()
        self._watching = False
        self.closed = False

    def send(self, data: bytes) -> bool:
        """Send a frame (or several, joined); False when the socket is closed or broken."""
        with self._lock:
            if self.closed:
                return False
            if self._pending:
                self._pending += data
                return True
            try:
                sent = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.closed = True
                return False
            if sent == len(data):
                return True
            self._pending += memoryview(data)[sent:]
            if not self._watching:
                self._watching = True
                if self._io.in_loop():
                    self._watch()
                else:
                    self._io.call_soon(self._watch)
        return True

    def _watch(self) -> None:
        try:
            self._io.loop.add_writer(self._sock.fileno(), self._flush)
        except (OSError, ValueError):  # (closed meanwhile)
            self._watching = False

    def _flush(self) -> None:
        with self._lock:
            try:
                sent = self._sock.send(self._pending)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.closed = True
                sent = len(self._pending)
            del self._pending[:sent]
            if self._pending:
                return
            self._watching = False
        self._io.loop.remove_writer(self._sock.fileno())

    def close(self) -> None:
        """Send nothing more (any thread); the socket itself is closed by its owner."""
        with self._lock:
            self.closed = True
            self._pending.clear()
            watching, self._watching = self._watching, False
        if watching:

            def unwatch() -> None:
                with contextlib.suppress(OSError, ValueError):
                    self._io.loop.remove_writer(self._sock.fileno())

            if self._io.in_loop():
                unwatch()
            elif not self._io.loop.is_closed():
                self._io.call_soon(unwatch)
