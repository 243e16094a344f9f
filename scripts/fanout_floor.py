"""The floor under a push to many engines of one host: the least any Python engines could do.

    python scripts/fanout_floor.py                # 64 engines, 8 MB, 30 calls of each kind
    python scripts/fanout_floor.py --engines 16 --mb 64

Issue 12 asks a push of 8 MB to all 64 engines to take at most twice a push to one. pxgrpc's
push writes the value once into a memfd, then each engine maps it (copy-on-write) and answers.
This measures the same shape with no pxgrpc at all: N Python processes forked from one (with
numpy loaded, as engines are), each on a Unix socket pair to the "client"; a push writes the
array into a fresh memfd once, sends each engine the file's path (a few bytes), and each engine
opens it, maps it privately as a numpy array, binds it in a dict (dropping the previous one) and
answers with one byte. No protobuf, no task ids, no metadata, no results to decode: what is left
is the operating system and Python waking N processes and running a few lines in each.

Prints the median wall time of: an empty round trip to all engines (the floor under an apply to
all), a push to one engine and a push to all, and the ratio the issue names. With `--messages`
the engines speak pxgrpc's task lane instead (`pxgrpc.lane` frames): each parses a real `Task`
(a push naming the memfd in `Task.shared_blobs`, the array as an `NDArray` on that blob),
checks the file's nonce before mapping it, and answers a real `TaskEvent` that the client
parses: the protocol's share of the floor, still without pxgrpc's engine and client machinery.
"""

from __future__ import annotations

import argparse
import mmap
import os
import select
import socket
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

from pxgrpc import lane
from pxgrpc import messages as pb

MB = 1 << 20
NONCE = b"0123456789abcdef"
PAGE = mmap.PAGESIZE


def engine(sock: socket.socket, messages: bool) -> None:
    if messages:
        protocol_engine(sock)
    else:
        bare_engine(sock)


def bare_engine(sock: socket.socket) -> None:
    """One minimal engine: map each path it is sent, bind it, answer (an empty message: answer)."""
    namespace: dict[str, object] = {}
    while True:
        message = sock.recv(4096)
        if not message:
            os._exit(0)
        if message != b"-":
            fd = os.open(message, os.O_RDONLY | os.O_CLOEXEC)
            try:
                size = os.fstat(fd).st_size
                mapping = mmap.mmap(fd, size, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)
            finally:
                os.close(fd)
            namespace["a"] = np.frombuffer(mapping, dtype=np.float64, offset=PAGE)
        sock.send(b"k")


def protocol_engine(sock: socket.socket) -> None:
    """One minimal engine on pxgrpc's lane messages: a `Task` in, a `TaskEvent` out."""
    namespace: dict[str, object] = {}
    reader = lane.FrameReader()
    while True:
        data = sock.recv(65536)
        if not data:
            os._exit(0)
        for body in reader.feed(data):
            for task in pb.DirectTasks.FromString(body).tasks:
                if task.action.WhichOneof("kind") == "push":
                    header = task.shared_blobs[0]
                    fd = os.open(header.shared.path, os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        if os.pread(fd, len(header.shared.nonce), 0) != header.shared.nonce:
                            raise SystemExit("not the task's file")
                        mapping = mmap.mmap(fd, os.fstat(fd).st_size, mmap.MAP_PRIVATE)
                    finally:
                        os.close(fd)
                    for name, value in task.action.push.namespace.items():
                        array = value.array_value
                        namespace[name] = np.ndarray(
                            tuple(array.shape), array.dtype, mapping, header.shared.offset
                        )
                event = pb.TaskEvent()
                result = event.result
                result.task_id = task.task_id
                result.engine_id = 0
                result.started = result.completed = time.time()
                result.value.null_value.SetInParent()
                sock.send(lane.event_frame(event))


def start(n: int, messages: bool) -> tuple[list[socket.socket], list[int]]:
    """Fork `n` engines; the client's end of each one's socket, and their pids."""
    ends: list[socket.socket] = []
    pids: list[int] = []
    for _ in range(n):
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:
            for other in ends:
                other.close()
            mine.close()
            try:
                engine(theirs, messages)
            finally:
                os._exit(1)
        theirs.close()
        ends.append(mine)
        pids.append(pid)
    return ends, pids


def call(ends: list[socket.socket], poller: select.epoll, message: bytes, messages: bool) -> None:
    """Send `message` to every engine in `ends` and wait for all their answers (with
    `messages`: `message` is a serialized `Task` but for its id, and each answer a `TaskEvent`)."""
    for i, end in enumerate(ends):
        end.send(
            lane.one_frame(pb.Task(task_id=f"t/{i}").SerializeToString() + message) if messages else message
        )
    left = len(ends)
    readers = {end.fileno(): lane.FrameReader() for end in ends} if messages else {}
    while left:
        for fd, _ in poller.poll():
            data = os.read(fd, 65536)
            if not messages:
                left -= 1
                continue
            for body in readers[fd].feed(data):
                for event in pb.LaneEvents.FromString(body).events:
                    if event.result.value.WhichOneof("kind") != "null_value":
                        raise SystemExit("not a push's result")
                    left -= 1


def push(ends: list[socket.socket], poller: select.epoll, array: np.ndarray, messages: bool) -> None:
    """Write the array into a fresh memfd once; every engine in `ends` maps it."""
    fd = os.memfd_create("floor", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, PAGE + array.nbytes)
        os.pwrite(fd, NONCE, 0)
        view = memoryview(array.data).cast("B")
        written = 0
        while written < array.nbytes:
            written += os.pwrite(fd, view[written:], PAGE + written)
        path = f"/proc/{os.getpid()}/fd/{fd}"
        if messages:
            task = pb.Task()
            value = task.action.push.namespace["a"].array_value
            value.dtype, value.shape[:] = array.dtype.str, array.shape
            value.data.blob.blob_id, value.data.blob.length = "b", array.nbytes
            shared = task.shared_blobs.add(blob_id="b", size=array.nbytes)
            shared.shared.path, shared.shared.nonce, shared.shared.offset = path, NONCE, PAGE
            call(ends, poller, task.SerializeToString(), messages)
        else:
            call(ends, poller, path.encode(), messages)
    finally:
        os.close(fd)


def timed(fn: Callable[[], object], reps: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engines", type=int, default=64)
    parser.add_argument("--mb", type=int, default=8)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--messages", action="store_true", help="speak pxgrpc's lane messages")
    args = parser.parse_args()
    messages = args.messages
    ends, pids = start(args.engines, messages)
    try:
        every = select.epoll()
        one = select.epoll()
        for end in ends:
            every.register(end.fileno(), select.EPOLLIN)
        one.register(ends[0].fileno(), select.EPOLLIN)
        array = np.random.default_rng(0).random(args.mb * MB // 8)
        empty = timed(lambda: call(ends, every, b"-" if not messages else b"", messages), args.calls)
        push_one = timed(lambda: push(ends[:1], one, array, messages), args.calls)
        push_all = timed(lambda: push(ends, every, array, messages), args.calls)
    finally:
        for end in ends:
            end.close()
        for pid in pids:
            os.waitpid(pid, 0)
    n = args.engines
    kind = "on pxgrpc's lane messages" if messages else "bare"
    print(f"{n} minimal engines ({kind}), {args.mb} MB, median of {args.calls} calls")
    print(f"  empty round trip to all   {empty * 1e3:7.2f} ms  ({empty / n * 1e6:.0f} µs per engine)")
    print(f"  push to one               {push_one * 1e3:7.2f} ms")
    print(f"  push to all               {push_all * 1e3:7.2f} ms")
    print(f"  push to all / to one      {push_all / push_one:7.2f}x   (issue 12's goal: at most 2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
