"""Fuzzing the Controller service with bad requests, as a careless client in any language sends them.

Every request goes through a real grpc channel to a real cluster. Bad requests must get
INVALID_ARGUMENT (NOT_FOUND for unknown engines and blobs) with a message naming the message
or field at fault, never another status and never a hang; and the controller must keep serving
everyone else: after each test a Python client still runs code on the same, living engines.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from raw_controller import Outcome, RawController

import pxgrpc
from pxgrpc import blobstream, wire
from pxgrpc.cluster import Cluster

pytestmark = pytest.mark.timeout(150)

pb = wire.pb
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@dataclass
class Fixture:
    cluster: Cluster
    rc: pxgrpc.Client
    raw: RawController
    pids: list[int]


@pytest.fixture(scope="module")
def live() -> Iterator[Fixture]:
    cluster = Cluster(n=2)
    try:
        rc = cluster.start_and_connect_sync(timeout=60)
        raw = RawController(cluster.connection_file)
        engines = raw.call("ListEngines", pb.ListEnginesRequest()).replies[0].engines
        try:
            yield Fixture(cluster, rc, raw, [e.pid for e in engines])
        finally:
            raw.close()
    finally:
        cluster.stop_cluster_sync()


@pytest.fixture
def fx(live: Fixture) -> Iterator[Fixture]:
    """The shared cluster; after the test, proof that it still serves a well-behaved client."""
    yield live
    engines = live.raw.call("ListEngines", pb.ListEnginesRequest()).replies[0].engines
    assert [(e.engine_id, e.pid) for e in engines] == list(enumerate(live.pids))
    dv = live.rc[:]
    dv.execute("still_here = 6 * 7", block=True)
    assert dv.pull("still_here", block=True) == [42, 42]
    assert dv.apply_sync(lambda x: x + 1, 1) == [2, 2]


def rejected(outcome: Outcome, *fields: str, codes: tuple[grpc.StatusCode, ...] = (INVALID,)) -> None:
    assert outcome.code in codes, outcome
    for name in fields:
        assert name in outcome.details, (name, outcome)


# --- raw and mutated bytes --------------------------------------------------------------------------

# Requests whose (mutated) contents cannot run code on the engines.
SAFE_REQUESTS: dict[str, Any] = {
    "ListEngines": pb.ListEnginesRequest(),
    "Pull": pb.PullRequest(
        targets=pb.Targets(all=True), names=["a", "b.c"], encoding=wire.ENCODING_TYPED_ONLY
    ),
    "Push": pb.PushRequest(
        targets=pb.Targets(engine_ids=[0, 1]),
        namespace={
            "a": pb.Value(list_value=pb.ValueList(items=[pb.Value(int_value=3), pb.Value(string_value="s")])),
            "m": pb.Value(
                array_value=pb.NDArray(dtype="<i4", shape=[2, 1], data=pb.Buffer(inline=b"\1\0\0\0\2\0\0\0"))
            ),
        },
    ),
    "Scatter": pb.ScatterRequest(
        targets=pb.Targets(all=True),
        name="part",
        value=pb.Value(array_value=pb.NDArray(dtype="<f8", shape=[2], data=pb.Buffer(inline=bytes(16)))),
    ),
    "Gather": pb.GatherRequest(
        targets=pb.Targets(engine_ids=[1, 0]), name="part", encoding=wire.ENCODING_TYPED_OR_REPR
    ),
    "QueueStatus": pb.QueueStatusRequest(targets=pb.Targets(engine_ids=[0]), verbose=True),
    "Abort": pb.AbortRequest(task_ids=["t1"], targets=pb.Targets(engine_ids=[1])),
    "Download": pb.DownloadRequest(blob_id="0123abcd"),
}
ALLOWED_WHEN_BROKEN = (grpc.StatusCode.OK, INVALID, NOT_FOUND)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    """A safe request, then bytes flipped, cut, inserted or replaced wholesale."""
    method = draw(st.sampled_from(sorted(SAFE_REQUESTS)))
    data = bytearray(SAFE_REQUESTS[method].SerializeToString())
    how = draw(st.sampled_from(["random", "flip", "truncate", "insert"]))
    if how == "random" or not data:
        return method, draw(st.binary(max_size=200))
    at = draw(st.integers(0, len(data) - 1))
    if how == "flip":
        data[at] ^= draw(st.integers(1, 255))
    elif how == "truncate":
        del data[at:]
    else:
        data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return method, bytes(data)


@FUZZ
@given(mutated())
def test_garbled_requests_get_invalid_argument_naming_the_message_or_a_valid_answer(
    fx: Fixture, case: tuple[str, bytes]
) -> None:
    method, data = case
    outcome = fx.raw.call(method, data, timeout=20)
    assert outcome.code in ALLOWED_WHEN_BROKEN, (method, data, outcome)
    if not outcome.ok:
        assert outcome.details, outcome
    if outcome.code == INVALID and "not a valid message" in outcome.details:
        assert f"{method}Request" in outcome.details or method == "Download"


# --- targets, names, encodings ---------------------------------------------------------------------

unknown_ids = st.integers(2, 2**31 - 1) | st.integers(-(2**31), -1)
TARGETED = [
    "Execute",
    "Apply",
    "Push",
    "Pull",
    "Scatter",
    "Gather",
    "Abort",
    "Interrupt",
    "QueueStatus",
    "Shutdown",
]


def _request(method: str, targets: wire.pb.Targets) -> Any:
    """A request of `method` that is valid apart from its targets (and harmless if it ran)."""
    value = pb.Value(list_value=pb.ValueList(items=[pb.Value(int_value=1)]))
    return {
        "Execute": lambda: pb.ExecuteRequest(targets=targets, code="pass"),
        "Apply": lambda: pb.ApplyRequest(
            targets=targets, apply=pb.ApplyAction(function=pb.Value(string_value="len"))
        ),
        "Push": lambda: pb.PushRequest(targets=targets, namespace={"x": value}),
        "Pull": lambda: pb.PullRequest(targets=targets, names=["x"]),
        "Scatter": lambda: pb.ScatterRequest(targets=targets, name="x", value=value),
        "Gather": lambda: pb.GatherRequest(targets=targets, name="x"),
        "Abort": lambda: pb.AbortRequest(targets=targets),
        "Interrupt": lambda: pb.InterruptRequest(targets=targets),
        "QueueStatus": lambda: pb.QueueStatusRequest(targets=targets),
        "Shutdown": lambda: pb.ShutdownRequest(targets=targets),
    }[method]()


@FUZZ
@given(st.sampled_from(TARGETED), st.lists(unknown_ids, min_size=1, max_size=3), st.booleans())
def test_unknown_engine_ids_get_not_found_naming_the_field(
    fx: Fixture, method: str, bad: list[int], mixed: bool
) -> None:
    ids = [0, *bad] if mixed else bad
    outcome = fx.raw.call(method, _request(method, pb.Targets(engine_ids=ids)))
    rejected(outcome, "targets.engine_ids", str(bad[0]), codes=(NOT_FOUND,))


@pytest.mark.parametrize("method", ["Execute", "Apply", "Push", "Pull", "Scatter", "Gather", "Interrupt"])
def test_missing_targets_get_invalid_argument(fx: Fixture, method: str) -> None:
    rejected(fx.raw.call(method, _request(method, pb.Targets())), "targets")


@pytest.mark.parametrize("number", [-1, 32, 999, 2**31 - 1])
def test_interrupt_with_a_number_that_is_no_signal_gets_invalid_argument_naming_the_field(
    fx: Fixture, number: int
) -> None:
    request = pb.InterruptRequest(targets=pb.Targets(all=True), signal_number=number)
    rejected(fx.raw.call("Interrupt", request), "signal_number", str(number))
    with pytest.raises(pxgrpc.PxConnectionError, match=f"INVALID_ARGUMENT signal_number: {number} "):
        fx.rc.interrupt(sig=number)
    with pytest.raises(ValueError, match=f"sig: {number} is not a signal"):
        fx.rc[:].apply_async(abs, -1).interrupt(number)


names = st.text(max_size=12).filter(lambda s: not s.isidentifier())


@FUZZ
@given(st.data())
def test_bad_names_and_encodings_get_invalid_argument_naming_the_field(
    fx: Fixture, data: st.DataObject
) -> None:
    all_ = pb.Targets(all=True)
    one = pb.Value(int_value=1)
    encoding = data.draw(st.integers(3, 2**31 - 1) | st.integers(-(2**31), -1), "encoding")
    name = data.draw(names, "name")
    dotted = data.draw(names.filter(lambda s: not all(p.isidentifier() for p in s.split("."))), "dotted")
    request, field = data.draw(
        st.sampled_from(
            [
                (pb.ExecuteRequest(targets=all_, code="pass", encoding=encoding), "encoding"),
                (pb.PullRequest(targets=all_, names=["x"], encoding=encoding), "encoding"),
                (pb.GatherRequest(targets=all_, name="x", encoding=encoding), "encoding"),
                (pb.PullRequest(targets=all_), "names"),
                (pb.PullRequest(targets=all_, names=["ok", dotted]), "names[1]"),
                (pb.GatherRequest(targets=all_, name=name), "name"),
                (
                    pb.ScatterRequest(targets=all_, name=name, value=pb.Value(list_value=pb.ValueList())),
                    "name",
                ),
                (pb.PushRequest(targets=all_, namespace={name: one}), "namespace"),
                (pb.ApplyRequest(targets=all_, apply=pb.ApplyAction()), "apply.function"),
                (
                    pb.ApplyRequest(
                        targets=all_,
                        apply=pb.ApplyAction(function=pb.Value(string_value="len"), kwargs={name: one}),
                    ),
                    "apply.kwargs",
                ),
                (pb.ScatterRequest(targets=all_, name="x", value=one), "value"),
                (pb.ScatterRequest(targets=all_, name="x"), "value"),
            ]
        ),
        "request",
    )
    method = type(request).__name__.removesuffix("Request")
    rejected(fx.raw.call(method, request), field)


# --- malformed values --------------------------------------------------------------------------------

BAD_DTYPES = ["<U4", "|O", "|V8", "<f16", "", "float64", "<M8[s]", "i4,i4", "<f3", "<i16", "b2", ">S3"]


@st.composite
def broken_leaf(draw: st.DrawFn) -> tuple[wire.pb.Value, str, grpc.StatusCode]:
    """A malformed Value, the end of the field path its error must name, and the status."""
    kind = draw(
        st.sampled_from(["unset", "dtype", "shape", "length", "unknown_blob", "blob_id", "offset", "opaque"])
    )
    dims = draw(st.lists(st.integers(0, 4), max_size=3))
    size = 8
    for n in dims:
        size *= n
    if kind == "unset":
        return pb.Value(), "no kind set", INVALID
    if kind == "opaque":
        return (
            pb.Value(opaque_value=pb.Opaque(type_name="builtins.set", repr="{1}")),
            ".opaque_value",
            INVALID,
        )
    if kind == "dtype":
        dtype = draw(
            st.sampled_from(BAD_DTYPES)
            | st.text(max_size=5).filter(lambda s: not wire.TYPED_DTYPE_RE.match(s))
        )
        return _array(dtype, dims, pb.Buffer(inline=bytes(size))), ".array_value.dtype", INVALID
    if kind == "shape":
        shape = [*dims, draw(st.integers(-(2**62), -1))]
        return _array("<f8", shape, pb.Buffer()), ".array_value.shape", INVALID
    if kind == "length":
        wrong = draw(st.integers(0, 64).map(lambda n: n if n != size else n + 1))
        return _array("<f8", dims, pb.Buffer(inline=bytes(wrong))), ".array_value.data", INVALID
    blob_id, offset, code, end = "neverUploaded", 0, NOT_FOUND, ".array_value.data.blob.blob_id"
    if kind == "blob_id":
        blob_id = draw(st.text(max_size=80).filter(lambda s: not wire.BLOB_ID_RE.match(s)))
        code = INVALID
    elif kind == "offset":
        offset, code, end = draw(st.integers(-(2**63), -1)), INVALID, ".array_value.data.blob"
    ref = pb.BlobSlice(blob_id=blob_id, offset=offset, length=size)
    return _array("<f8", dims, pb.Buffer(blob=ref)), end, code


def _array(dtype: str, shape: list[int], data: wire.pb.Buffer) -> wire.pb.Value:
    return pb.Value(array_value=pb.NDArray(dtype=dtype, shape=shape, data=data))


@st.composite
def nested(draw: st.DrawFn) -> tuple[wire.pb.Value, str, str, grpc.StatusCode]:
    """A broken leaf somewhere inside lists and maps of good values: (value, path, end, code)."""
    leaf, end, code = draw(broken_leaf())
    value, path = leaf, ""
    for step in reversed(draw(st.lists(st.sampled_from(["list", "map"]), max_size=3))):
        good = pb.Value(string_value="fine")
        if step == "list":
            at = draw(st.integers(0, 2))
            items = [good] * at + [value] + [good] * draw(st.integers(0, 2))
            value, path = pb.Value(list_value=pb.ValueList(items=items)), f".list_value.items[{at}]{path}"
        else:
            key = draw(st.text(max_size=6))
            entries = {k: good for k in draw(st.lists(st.text(max_size=3), max_size=2)) if k != key}
            entries[key] = value
            value, path = pb.Value(map_value=pb.ValueMap(entries=entries)), f".map_value[{key!r}]{path}"
    return value, path, end, code


@FUZZ
@given(nested(), st.sampled_from(["Push", "Scatter", "Apply.args", "Apply.kwargs", "Apply.function"]))
def test_malformed_values_are_refused_before_any_engine_sees_them(
    fx: Fixture, case: tuple[wire.pb.Value, str, str, grpc.StatusCode], how: str
) -> None:
    value, path, end, code = case
    targets = pb.Targets(all=True)
    fn = pb.Value(string_value="len")
    if how == "Push":
        method, request, where = (
            "Push",
            pb.PushRequest(targets=targets, namespace={"v": value}),
            "namespace['v']",
        )
    elif how == "Scatter":
        wrapped = pb.Value(list_value=pb.ValueList(items=[pb.Value(int_value=0), value]))
        method, request = "Scatter", pb.ScatterRequest(targets=targets, name="v", value=wrapped)
        where = "value.list_value.items[1]"
    elif how == "Apply.args":
        method, where = "Apply", "apply.args[1]"
        request = pb.ApplyRequest(targets=targets, apply=pb.ApplyAction(function=fn, args=[fn, value]))
    elif how == "Apply.kwargs":
        method, where = "Apply", "apply.kwargs['k']"
        request = pb.ApplyRequest(targets=targets, apply=pb.ApplyAction(function=fn, kwargs={"k": value}))
    else:
        method, where = "Apply", "apply.function"
        request = pb.ApplyRequest(targets=targets, apply=pb.ApplyAction(function=value))
    outcome = fx.raw.call(method, request)
    if how == "Apply.function" and not path and end == "no kind set":
        rejected(outcome, "apply.function: required")
        return
    rejected(outcome, where + path + (end if end.startswith(".") else ""), codes=(code,))
    if not end.startswith("."):
        assert end in outcome.details


def test_oversized_inline_bytes_are_refused_with_a_hint(fx: Fixture) -> None:
    big = pb.Value(bytes_value=bytes(wire.MAX_INLINE + 1))
    outcome = fx.raw.call("Push", pb.PushRequest(targets=pb.Targets(all=True), namespace={"b": big}))
    rejected(outcome, "namespace['b'].bytes_value", "large_bytes_value")


def test_slices_past_the_end_of_an_uploaded_blob_are_refused(fx: Fixture) -> None:
    blob_id = fx.raw.upload(bytes(64))
    ref = pb.BlobSlice(blob_id=blob_id, offset=32, length=40)
    value = pb.Value(large_bytes_value=pb.Buffer(blob=ref))
    outcome = fx.raw.call("Push", pb.PushRequest(targets=pb.Targets(all=True), namespace={"b": value}))
    rejected(outcome, "namespace['b'].large_bytes_value.blob", "outside blob")


# --- blob streams ---------------------------------------------------------------------------------------


def _header(blob_id: str, size: int) -> bytes:
    return pb.BlobChunk(header=pb.BlobHeader(blob_id=blob_id, size=size)).SerializeToString()


@st.composite
def bad_upload(draw: st.DrawFn) -> tuple[list[bytes], str]:
    """A blob stream that breaks a rule, and the message or field its error must name."""
    blob_id = blobstream.new_id()
    size = draw(st.integers(0, 3000))
    kind = draw(
        st.sampled_from(["empty", "no_header", "blob_id", "size", "short", "long", "second_header", "junk"])
    )
    sizes = draw(st.lists(st.integers(1, 1500), max_size=4))
    if kind == "empty":
        return [], "BlobChunk.header"
    if kind == "no_header":
        return [blobstream.encode_data_chunk(bytes(n)) for n in sizes or [1]], "BlobChunk.header"
    if kind == "blob_id":
        bad = draw(st.text(max_size=80).filter(lambda s: not wire.BLOB_ID_RE.match(s)))
        return [_header(bad, 0)], "BlobHeader.blob_id"
    if kind == "size":
        return [_header(blob_id, draw(st.integers(-(2**63), -1)))], "BlobHeader.size"
    if kind == "second_header":
        return [_header(blob_id, size), _header(blob_id, size)], "BlobChunk"
    if kind == "junk":
        junk = draw(st.binary(min_size=1, max_size=40).filter(lambda b: b[0] != 0x0A))
        return [_header(blob_id, size), junk], "BlobChunk"
    total = sum(sizes)
    if kind == "short":
        declared = total + draw(st.integers(1, 5000))
    else:  # long: more data than the header announced
        if total == 0:
            sizes, total = [1], 1
        declared = draw(st.integers(0, total - 1))
    chunks = [blobstream.encode_data_chunk(bytes(n)) for n in sizes]
    return [_header(blob_id, declared), *chunks], "BlobChunk.data"


@FUZZ
@given(bad_upload())
def test_broken_blob_streams_get_invalid_argument_naming_the_field(
    fx: Fixture, case: tuple[list[bytes], str]
) -> None:
    messages, field = case
    rejected(fx.raw.stream_in("Upload", messages), field)


def test_oversized_chunks_and_reused_blob_ids_are_refused(fx: Fixture) -> None:
    blob_id = blobstream.new_id()
    huge = blobstream.encode_data_chunk(bytes(blobstream.MAX_CHUNK + 1))
    rejected(
        fx.raw.stream_in("Upload", [_header(blob_id, blobstream.MAX_CHUNK + 1), huge]),
        "BlobChunk.data",
        "more than",
    )
    done = fx.raw.upload(b"abc")
    rejected(
        fx.raw.stream_in("Upload", [_header(done, 3), blobstream.encode_data_chunk(b"abc")]),
        "already uploaded",
    )
    rejected(
        fx.raw.call("Download", pb.DownloadRequest(blob_id="never-was")), "never-was", codes=(NOT_FOUND,)
    )


# --- sessions ----------------------------------------------------------------------------------------------


@st.composite
def bad_task(draw: st.DrawFn) -> tuple[wire.pb.SubmitTask, str]:
    """A SubmitTask that breaks one rule, and the field its error result must name."""
    task_id = draw(st.text(alphabet="abcdef0123456789", min_size=1, max_size=10))
    pull = pb.Action(pull=pb.PullAction(names=["x"]))
    kind = draw(st.sampled_from(["task_id", "engine_id", "action", "encoding", "blob_ids"]))
    if kind == "task_id":
        return pb.SubmitTask(engine_id=0, action=pull), "SubmitTask.task_id"
    if kind == "engine_id":
        return pb.SubmitTask(
            task_id=task_id, engine_id=draw(unknown_ids), action=pull
        ), "SubmitTask.engine_id"
    if kind == "action":
        return pb.SubmitTask(task_id=task_id, engine_id=1), "SubmitTask.action"
    if kind == "encoding":
        encoding = draw(st.integers(3, 1000))
        return pb.SubmitTask(
            task_id=task_id, engine_id=0, action=pull, encoding=encoding
        ), "SubmitTask.encoding"
    bad = draw(st.text(max_size=80).filter(lambda s: not wire.BLOB_ID_RE.match(s)))
    return pb.SubmitTask(task_id=task_id, engine_id=0, action=pull, blob_ids=[bad]), "SubmitTask.blob_ids"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad_task())
def test_bad_tasks_in_a_session_get_an_error_result_naming_the_field(
    fx: Fixture, case: tuple[wire.pb.SubmitTask, str]
) -> None:
    task, field = case
    answered = threading.Event()

    def requests() -> Iterator[bytes]:
        yield pb.SessionRequest(tasks=[task]).SerializeToString()
        answered.wait(20)  # a real client keeps its session open until its results are in

    call = fx.raw.channel.stream_stream(f"/{wire.CONTROLLER_SERVICE}/Session")(
        requests(), metadata=fx.raw.metadata, timeout=30
    )
    results = []
    for raw in call:
        results += [e.result for e in pb.SessionEvent.FromString(raw).events if e.HasField("result")]
        if results:
            answered.set()
    assert len(results) == 1
    assert results[0].status == wire.TASK_ERROR and field in results[0].error.evalue, results[0]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=1, max_size=60).filter(lambda b: _unparsable(pb.SessionRequest, b)))
def test_a_garbled_session_message_ends_the_session_with_invalid_argument_after_earlier_tasks(
    fx: Fixture, garbage: bytes
) -> None:
    good = pb.SubmitTask(task_id="ok", engine_id=1, action=pb.Action(execute=pb.ExecuteAction(code="1")))
    answered = threading.Event()

    def requests() -> Iterator[bytes]:
        yield pb.SessionRequest(tasks=[good]).SerializeToString()
        yield garbage
        answered.wait(20)

    call = fx.raw.channel.stream_stream(f"/{wire.CONTROLLER_SERVICE}/Session")(
        requests(), metadata=fx.raw.metadata, timeout=30
    )
    results = []
    with pytest.raises(grpc.RpcError) as info:
        for raw in call:
            results += [e.result for e in pb.SessionEvent.FromString(raw).events if e.HasField("result")]
    answered.set()
    assert [(r.task_id, r.status) for r in results] == [("ok", wire.TASK_OK)]
    assert info.value.code() == INVALID and "SessionRequest: not a valid message" in (
        info.value.details() or ""
    )


def _unparsable(cls: Any, data: bytes) -> bool:
    try:
        cls.FromString(data)
    except DecodeError:
        return True
    return False
