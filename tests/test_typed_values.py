"""Typed values between a non-Python client and Python engines, over the plain Controller RPCs.

Requests here are built as protobuf messages by hand (or with the typed encoder, which only
emits what any language can write) and sent through a bare grpc channel: what a Node or Go
client does. Engines must see plain Python types, and typed pulls must give the same values
back, never pickle bytes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from raw_controller import RawController

from pxgrpc import wire
from pxgrpc.cluster import Cluster

pytestmark = pytest.mark.timeout(120)

pb = wire.pb
ALL = pb.Targets(all=True)
TYPED = wire.ENCODING_TYPED_ONLY
REPR = wire.ENCODING_TYPED_OR_REPR


@pytest.fixture(scope="module")
def raw(cluster4: tuple[Cluster, Any]) -> Iterator[RawController]:
    caller = RawController(cluster4[0].connection_file)
    try:
        yield caller
    finally:
        caller.close()


def V(**kind: Any) -> wire.pb.Value:
    return pb.Value(**kind)


def array(dtype: str, shape: list[int], data: bytes | None = None, blob: str | None = None) -> wire.pb.Value:
    if blob is not None:
        assert data is not None
        buffer = pb.Buffer(blob=pb.BlobSlice(blob_id=blob, offset=0, length=len(data)))
    else:
        buffer = pb.Buffer(inline=data or b"")
    return V(array_value=pb.NDArray(dtype=dtype, shape=shape, data=buffer))


def pull_values(raw: RawController, names: list[str], encoding: int = TYPED) -> list[Any]:
    """Pull from every engine with a typed encoding; decode each engine's list of values."""
    outcome = raw.call("Pull", pb.PullRequest(targets=ALL, names=names, encoding=encoding))
    assert outcome.ok, outcome
    results = sorted(outcome.results(), key=lambda r: r.engine_id)  # they arrive as engines finish
    for result in results:
        assert result.status == wire.TASK_OK, result.error
        assert not _has_pickle(result.value)
    blobs = raw.blobs_of(results)  # downloaded after the call ended, as other languages do
    return [wire.decode(r.value, blobs) for r in results]


def _has_pickle(value: wire.pb.Value) -> bool:
    kind = value.WhichOneof("kind")
    if kind == "pickled_value":
        return True
    if kind == "list_value":
        return any(_has_pickle(v) for v in value.list_value.items)
    if kind == "map_value":
        return any(_has_pickle(v) for v in value.map_value.entries.values())
    return False


def same(a: Any, b: Any) -> bool:
    """Exact equality, with arrays compared by dtype, shape and bytes (NaN-safe)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and a.tobytes() == b.tobytes()
        )
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return type(a) is type(b) and a == b


def test_values_from_another_language_arrive_as_python_types_and_come_back_the_same(
    raw: RawController,
) -> None:
    matrix = np.arange(6, dtype="<f8").reshape(2, 3) / 4
    ints = np.arange(100_000, dtype="<i4")  # 400 KB: its bytes travel in a blob
    big_bytes = bytes(range(256)) * 5000  # 1.28 MB: more than fits inline
    blob_id = raw.upload(ints.tobytes() + big_bytes)
    namespace = {
        "i": V(int_value=-(2**63)),
        "f": V(float_value=2.5),
        "s": V(string_value="héllo ✓"),
        "t": V(bool_value=True),
        "n": V(null_value=pb.Null()),
        "b": V(bytes_value=b"\x00\xffraw"),
        "lst": V(
            list_value=pb.ValueList(
                items=[V(int_value=1), V(string_value="two"), V(list_value=pb.ValueList())]
            )
        ),
        "d": V(
            map_value=pb.ValueMap(entries={"k": V(float_value=1.0), "nested": V(map_value=pb.ValueMap())})
        ),
        "m": array("<f8", [2, 3], matrix.tobytes()),
        "flags": array("|b1", [3], b"\x01\x00\x01"),
        "ints": V(
            array_value=pb.NDArray(
                dtype="<i4",
                shape=[len(ints)],
                data=pb.Buffer(blob=pb.BlobSlice(blob_id=blob_id, offset=0, length=ints.nbytes)),
            )
        ),
        "big": V(
            large_bytes_value=pb.Buffer(
                blob=pb.BlobSlice(blob_id=blob_id, offset=ints.nbytes, length=len(big_bytes))
            )
        ),
    }
    pushed = raw.call("Push", pb.PushRequest(targets=ALL, namespace=namespace))
    assert pushed.ok, pushed
    assert all(r.status == wire.TASK_OK for r in pushed.results()), pushed.results()

    check = (
        "import numpy as np\n"
        "assert type(i) is int and type(f) is float and type(s) is str and t is True and n is None\n"
        "assert type(b) is bytes and type(big) is bytes and len(big) == 1280000\n"
        "assert lst == [1, 'two', []] and d == {'k': 1.0, 'nested': {}}\n"
        "assert isinstance(m, np.ndarray) and m.dtype == np.float64 and m.shape == (2, 3)\n"
        "assert flags.dtype == np.bool_ and ints.dtype == np.int32 and int(ints.sum()) == 4999950000\n"
        "print('types ok')\n"
    )
    ran = raw.call("Execute", pb.ExecuteRequest(targets=ALL, code=check))
    assert ran.ok, ran
    assert all(r.status == wire.TASK_OK for r in ran.results()), [r.error.evalue for r in ran.results()]
    outputs = [e.output.text for e in ran.replies if e.HasField("output")]
    assert outputs.count("types ok\n") == 4

    names = ["i", "f", "s", "t", "n", "b", "lst", "d", "m", "flags", "ints", "big"]
    expected = [
        -(2**63),
        2.5,
        "héllo ✓",
        True,
        None,
        b"\x00\xffraw",
        [1, "two", []],
        {"k": 1.0, "nested": {}},
    ]
    expected += [matrix, np.array([True, False, True]), ints, big_bytes]
    for values in pull_values(raw, names):
        assert same(values, expected)


def test_python_only_objects_give_a_typed_error_or_their_repr_never_pickles(raw: RawController) -> None:
    setup = raw.call(
        "Execute",
        pb.ExecuteRequest(targets=ALL, code="s = {1, 2}\nhuge = 2**70\ndeep = []\ndeep.append(deep)"),
    )
    assert setup.ok and all(r.status == wire.TASK_OK for r in setup.results())

    for name, what in (("s", "builtins.set"), ("huge", "more than 64 bits"), ("deep", "nested deeper")):
        outcome = raw.call("Pull", pb.PullRequest(targets=ALL, names=[name], single=True, encoding=TYPED))
        assert outcome.ok, outcome
        for result in outcome.results():
            assert result.status == wire.TASK_ERROR
            assert result.error.ename == "EncodingError" and what in result.error.evalue
            assert not result.HasField("value") or not _has_pickle(result.value)

    outcome = raw.call("Pull", pb.PullRequest(targets=ALL, names=["s", "huge"], encoding=REPR))
    for result in outcome.results():
        assert result.status == wire.TASK_OK and not _has_pickle(result.value)
        opaque = [v.opaque_value for v in result.value.list_value.items]
        assert [(o.type_name, o.repr) for o in opaque] == [
            ("builtins.set", "{1, 2}"),
            ("builtins.int", str(2**70)),
        ]


def test_scatter_and_gather_split_and_join_typed_lists_and_arrays(raw: RawController) -> None:
    items = [V(int_value=i) for i in range(10)]
    scattered = raw.call(
        "Scatter", pb.ScatterRequest(targets=ALL, name="part", value=V(list_value=pb.ValueList(items=items)))
    )
    assert scattered.ok and all(r.status == wire.TASK_OK for r in scattered.results())
    assert [len(p) for p in pull_values(raw, ["part"])] == [1, 1, 1, 1]  # one name pulled: a 1-list each
    assert [p[0] for p in pull_values(raw, ["part"])] == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    gathered = raw.call("Gather", pb.GatherRequest(targets=ALL, name="part", encoding=TYPED))
    assert gathered.ok, gathered
    assert wire.decode(gathered.replies[0].value) == list(range(10))

    floats = np.linspace(0, 1, 100_001)  # 800 KB, in a blob; every part comes back inline
    blob_id = raw.upload(floats.tobytes())
    value = array("<f8", [len(floats)], floats.tobytes(), blob=blob_id)
    assert raw.call("Scatter", pb.ScatterRequest(targets=ALL, name="chunk", value=value)).ok
    gathered = raw.call("Gather", pb.GatherRequest(targets=ALL, name="chunk", encoding=TYPED))
    assert gathered.ok, gathered
    assert gathered.replies[0].value.WhichOneof("kind") == "array_value"
    assert same(wire.decode(gathered.replies[0].value), floats)


# --- properties ------------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(wire.INT64_MIN, wire.INT64_MAX)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=40)
)
arrays = hnp.arrays(
    dtype=st.sampled_from(
        ["<f8", "<f4", "<i8", "<i4", "<i2", "|i1", "<u8", "<u4", "<u2", "|u1", "|b1", "<c16"]
    ),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
)
typed_values = st.recursive(
    scalars | arrays,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(typed_values)
def test_typed_encoding_round_trips_any_plain_data(obj: Any) -> None:
    value, blob = wire.encode(obj, TYPED)
    assert blob is None and not _has_pickle(value)
    wire.validate_value(value, "value", lambda _: None)
    assert same(wire.decode(pb.Value.FromString(value.SerializeToString())), obj)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(typed_values)
def test_engines_give_back_what_a_typed_client_pushed(raw: RawController, obj: Any) -> None:
    value, _ = wire.encode(obj, TYPED)
    pushed = raw.call("Push", pb.PushRequest(targets=pb.Targets(engine_ids=[0, 3]), namespace={"v": value}))
    assert pushed.ok, pushed
    outcome = raw.call(
        "Pull",
        pb.PullRequest(targets=pb.Targets(engine_ids=[0, 3]), names=["v"], single=True, encoding=TYPED),
    )
    assert outcome.ok and len(outcome.results()) == 2
    for result in outcome.results():
        assert result.status == wire.TASK_OK, result.error
        assert same(wire.decode(result.value), obj)
