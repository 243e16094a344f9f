"""Task lanes (`pxgrpc.lane`): DirectView tasks for an engine on the client's host go over a Unix
socket the engine's main thread reads, not over gRPC; bad input on a lane is refused with the
reason and the engine serves on. (Ordering across paths, queue status, abort and interrupt of
direct tasks are in test_direct_tasks.py, which runs on lanes and on `EngineData.Tasks`.)"""

from __future__ import annotations

import socket
import time
from typing import Any

import numpy as np
import pytest

import pxgrpc
from pxgrpc import lane, wire
from pxgrpc.client.lanelink import LaneLink
from pxgrpc.cluster import Cluster
from tests.conftest import lanes_open, until

pytestmark = pytest.mark.timeout(90)


def _lane_path(rc: pxgrpc.Client, engine_id: int) -> str:
    path = rc._transport._datapath.lane_for(engine_id)
    assert path, "the engine advertises no task lane"
    return path


class RawLane:
    """A lane as another language's client would open it: a socket, frames both ways."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(lane.address(path))
        self._reader = lane.FrameReader()
        self._bodies: list[bytes] = []

    def __enter__(self) -> RawLane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> wire.pb.LaneEvents:
        """The next message the engine sent."""
        while not self._bodies:
            data = self.sock.recv(65536)
            assert data, "the engine closed the lane without a word"
            self._bodies += self._reader.feed(data)
        return wire.pb.LaneEvents.FromString(self._bodies.pop(0))


def _token(rc: pxgrpc.Client) -> str:
    return rc._transport._datapath.token


def test_direct_tasks_go_on_the_task_lane_with_their_output(cluster4: tuple[Cluster, pxgrpc.Client]) -> None:
    _, rc = cluster4
    # (The client opens the lanes as soon as it knows the engines: no task needs to go first.)
    lanes_open(rc)
    before = rc.queue_status()[0]["completed"]
    assert [rc[0].apply_sync(pow, 2, i) for i in range(10)] == [2**i for i in range(10)]
    ar = rc[:].execute("print('hello from', 6 * 7)", block=True)
    assert ar.stdout == ["hello from 42\n"] * len(rc.ids)
    assert rc[:].scatter("part", list(range(10)), block=True) is None
    assert rc[:].gather("part", block=True) == list(range(10))
    # The controller hears of lane tasks later, without costing the round trip anything.
    until(lambda: rc.queue_status()[0]["completed"] >= before + 12, what="the completed count")


def test_a_lane_with_a_wrong_token_is_refused_with_the_reason(
    cluster4: tuple[Cluster, pxgrpc.Client],
) -> None:
    _, rc = cluster4
    with RawLane(_lane_path(rc, 0)) as raw:
        raw.send(lane.frame(wire.pb.LaneHello(token="not-the-token")))
        reply = raw.read()
    assert "token" in reply.error and not reply.events
    assert rc[0].apply_sync(abs, -3) == 3


def test_bad_messages_on_a_lane_are_refused_and_the_engine_serves_on(
    cluster4: tuple[Cluster, pxgrpc.Client],
) -> None:
    _, rc = cluster4
    path = _lane_path(rc, 1)
    # Not a LaneHello first.
    with RawLane(path) as raw:
        raw.send(lane.HEADER.pack(3) + b"\xff\xff\xff")
        assert "LaneHello" in raw.read().error
    # A task id without its session.
    with RawLane(path) as raw:
        raw.send(lane.frame(wire.pb.LaneHello(token=_token(rc))))
        accepted = raw.read()
        assert not accepted.error
        raw.send(lane.tasks_frame([wire.pb.Task(task_id="no-session")]))
        refused = raw.read()
        assert "Task.task_id" in refused.error and "no-session" in refused.error
    # Bytes that are no DirectTasks.
    with RawLane(path) as raw:
        raw.send(lane.frame(wire.pb.LaneHello(token=_token(rc))))
        raw.read()
        raw.send(lane.HEADER.pack(2) + b"\x0a\xff")
        assert "DirectTasks" in raw.read().error
    # A frame longer than any allowed, after the hello.
    with RawLane(path) as raw:
        raw.send(lane.frame(wire.pb.LaneHello(token=_token(rc))))
        raw.read()
        raw.send(lane.HEADER.pack(lane.MAX_FRAME + 1))
        assert "framing" in raw.read().error
    # A frame longer than any allowed, as the hello: the connection is dropped.
    with RawLane(path) as raw:
        raw.send(lane.HEADER.pack(lane.MAX_FRAME + 1))
        assert raw.sock.recv(100) == b""
    assert rc[:].apply_sync(abs, -4) == [4] * len(rc.ids)


def test_a_task_sent_on_a_raw_lane_runs_and_answers_on_it(cluster4: tuple[Cluster, pxgrpc.Client]) -> None:
    """What another language's client does: hello, a task, its result event on the lane."""
    _, rc = cluster4
    session = rc._transport._session_id
    task = wire.pb.Task(task_id=f"{session}/raw-1", direct_results=True, submitted=time.time())
    task.action.execute.code = "raw_lane_value = 11 * 3"
    with RawLane(_lane_path(rc, 0)) as raw:
        raw.send(lane.frame(wire.pb.LaneHello(token=_token(rc))) + lane.tasks_frame([task]))
        assert not raw.read().error
        result = raw.read().events[0].result
    assert result.task_id == f"{session}/raw-1" and result.status == wire.TASK_OK
    assert rc[0].pull("raw_lane_value", block=True) == 33


def test_without_lanes_direct_tasks_use_the_tasks_stream(
    make_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PXGRPC_TASK_LANE", "off")
    _, rc = make_cluster(n=1)
    links = rc._transport._links
    until(lambda: rc[0].apply_sync(int) == 0 and links.usable(0) is not None, what="the Tasks stream")
    assert not isinstance(links.usable(0), LaneLink)
    assert rc[0].apply_sync(pow, 3, 3) == 27


def test_large_values_go_on_the_lanes_as_one_file_in_order_and_private(
    cluster4: tuple[Cluster, pxgrpc.Client],
) -> None:
    """A push with a large value to engines on the client's host goes on their lanes: the value
    is written once into a file of the client's that every engine maps privately; the file is
    closed once all have their result, and the client's tasks keep their order."""
    _, rc = cluster4
    lanes_open(rc, shared_memory=True)
    uploads: list[str] = []
    original = rc._transport.submitter._upload

    async def counted(blob: Any) -> None:
        uploads.append(blob.blob_id)
        await original(blob)

    rc._transport.submitter._upload = counted  # type: ignore[method-assign]
    try:
        dv = rc[:]
        dv.execute("seen = []", block=True)
        pending = []
        for i in range(6):
            big = np.full(1 << 18, float(i))
            pending.append(dv.push({"big": big}, block=False))
            big[:] = -1  # (the sender's later changes do not reach the engines)
            pending.append(dv.execute("seen.append(float(big[0])); big[0] = -5.0", block=False))
        for ar in pending:
            ar.get(timeout=30)
        assert dv.pull("seen", block=True) == [[float(i) for i in range(6)]] * len(rc.ids)
        assert not uploads  # (nothing went up to the controller)
        assert [float(x[0]) for x in dv.pull("big", block=True)] == [-5.0] * len(rc.ids)
        assert not rc._transport.submitter.shared_files._by_task
    finally:
        del rc._transport.submitter._upload


def test_the_frame_reader_gives_whole_frames_however_the_bytes_are_cut() -> None:
    bodies = [b"", b"a", b"hello" * 7, bytes(range(256)) * 300]
    stream = b"".join(lane.HEADER.pack(len(b)) + b for b in bodies)
    for cut in (1, 3, 4, 5, 100, 65536, len(stream)):
        reader = lane.FrameReader()
        got: list[bytes] = []
        for start in range(0, len(stream), cut):
            got += reader.feed(stream[start : start + cut])
        assert got == bodies, f"pieces of {cut} bytes"
    with pytest.raises(lane.FrameError, match="a frame of"):
        lane.FrameReader().feed(lane.HEADER.pack(lane.MAX_FRAME + 1) + b"x")
    reader = lane.FrameReader()
    assert reader.feed(b"\x05\x00") == []
    with pytest.raises(lane.FrameError):
        reader.feed(lane.HEADER.pack(lane.MAX_FRAME + 1)[2:] + b"\x00\x00")


def _answered_at_once(view: Any) -> int:
    """How many lane pushes the engine answered as it read them."""
    count = view.apply_sync(lambda: __import__("pxgrpc.engine.engine", fromlist=["_"]).answered_at_once)
    return int(count["push"])


def _shared_push(task_id: str, name: str, array: np.ndarray, nonce: bytes | None = None) -> tuple[Any, Any]:
    """A push task naming a file of ours that holds `array` (with a wrong `nonce`, if given)."""
    from pxgrpc import sharedmem

    file = sharedmem.SharedFile(array.nbytes)
    file.write_chunks([memoryview(array).cast("B")])
    task = wire.pb.Task(task_id=task_id, direct_results=True, submitted=time.time())
    value = task.action.push.namespace[name].array_value
    value.dtype, value.shape[:] = array.dtype.str, array.shape
    value.data.blob.blob_id, value.data.blob.length = "b1", array.nbytes
    header = task.shared_blobs.add(blob_id="b1", size=array.nbytes)
    header.shared.CopyFrom(file.describe())
    if nonce is not None:
        header.shared.nonce = nonce
    return task, file


def test_a_push_of_shared_arrays_is_answered_as_it_is_read_and_other_tasks_keep_their_turn(
    cluster4: tuple[Cluster, pxgrpc.Client],
) -> None:
    """An engine with nothing queued maps and binds a lane's push of arrays on the client's
    shared file the moment it reads it, and answers (an engine's share of a push to many costs
    a fraction of a task's steps). A push with other values, or one read behind a queued task,
    takes the usual way, in its turn; one whose file cannot be used fails with the reason."""
    _, rc = cluster4
    lanes_open(rc, shared_memory=True)
    e0 = rc[0]
    before = _answered_at_once(e0)
    big = np.arange(1 << 18, dtype=np.float64)
    e0.push({"a": big}, block=True)
    assert _answered_at_once(e0) == before + 1
    e0.push({"a2": big * 2, "n": 5}, block=True)  # (not only arrays: the usual way)
    assert _answered_at_once(e0) == before + 1
    a, a2, n = e0.pull(["a", "a2", "n"], block=True)
    assert np.array_equal(a, big) and np.array_equal(a2, big * 2) and n == 5

    session = rc._transport._session_id
    first = wire.pb.Task(task_id=f"{session}/raw-q1", direct_results=True, submitted=time.time())
    first.action.execute.code = "import time; time.sleep(0.2); turn = a3[0] if 'a3' in dir() else None"
    push, file = _shared_push(f"{session}/raw-q2", "a3", np.full(1 << 17, 7.0))
    bad, bad_file = _shared_push(f"{session}/raw-q3", "a4", np.full(1 << 17, 8.0), nonce=b"x" * 16)
    try:
        with RawLane(_lane_path(rc, 0)) as raw:
            raw.send(lane.frame(wire.pb.LaneHello(token=_token(rc))) + lane.tasks_frame([first, push]))
            assert not raw.read().error
            results = [raw.read().events[0].result for _ in range(2)]
            raw.send(lane.tasks_frame([bad]))
            failed = raw.read().events[0].result
    finally:
        file.close()
        bad_file.close()
    assert [r.task_id.partition("/")[2] for r in results] == ["raw-q1", "raw-q2"]
    assert [r.status for r in results] == [wire.TASK_OK, wire.TASK_OK]
    assert _answered_at_once(e0) == before + 1  # (the push waited behind the execute)
    assert e0.pull("turn", block=True) is None  # (it ran after the execute, in its turn)
    assert float(e0.pull("a3", block=True)[0]) == 7.0
    assert failed.status == wire.TASK_ERROR and "b1" in failed.error.evalue, failed.error
    assert "a4" not in e0.apply_sync(dir)
    assert _answered_at_once(e0) == before + 1
    assert rc[:].apply_sync(abs, -2) == [2] * len(rc.ids)  # (every engine serves on)
