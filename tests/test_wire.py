"""Value encoding: typed where possible, pickled otherwise, large buffers in blobs."""

from __future__ import annotations

import numpy as np
import pytest

from pxgrpc import blobstream, wire
from pxgrpc.partition import partition, partition_bounds

pytestmark = pytest.mark.timeout(30)


def roundtrip(obj: object, mode: int = wire.ENCODING_PICKLE) -> object:
    value, blob = wire.encode(obj, mode)
    blobs: wire.BlobMap = {}
    if blob is not None:
        raw = list(blob.raw_messages())
        header = blobstream.parse_header(raw[0])
        incoming = blobstream.IncomingBlob(header.blob_id, header.size)
        for chunk in raw[1:]:
            assert len(chunk) <= blobstream.CHUNK_SIZE + 16
            incoming.write(blobstream.parse_data_chunk(chunk))
        assert incoming.complete
        blobs[header.blob_id] = incoming
    wire_value = wire.pb.Value.FromString(value.SerializeToString())
    return wire.decode(wire_value, blobs)


@pytest.mark.parametrize(
    "obj",
    [
        None,
        True,
        False,
        0,
        -(2**63),
        2**63 - 1,
        2**80,
        1.5,
        "text ü",
        b"\x00\xff",
        [1, "a"],
        {"k": [None]},
        (1, 2),
        {1, 2},
    ],
)
def test_python_values_round_trip(obj: object) -> None:
    assert roundtrip(obj) == obj


@pytest.mark.parametrize("dtype", ["<f8", "<f4", "<i8", "<i4", "|u1", "|b1", "<c16", ">i4"])
def test_arrays_round_trip_typed_with_their_shape(dtype: str) -> None:
    arr = (np.arange(24) % 7).astype(dtype).reshape(2, 3, 4)
    value, _ = wire.encode(arr)
    assert value.WhichOneof("kind") == "array_value"
    back = roundtrip(arr)
    assert isinstance(back, np.ndarray) and back.shape == (2, 3, 4) and np.array_equal(back, arr)


def test_large_buffers_travel_in_a_blob_in_chunks() -> None:
    arr = np.arange(3_000_000, dtype=np.float64)  # 24 MB
    value, blob = wire.encode({"a": arr, "b": arr[::2].copy()})
    assert blob is not None and blob.size >= arr.nbytes
    assert len(value.SerializeToString()) < 64 * 1024
    back = roundtrip({"a": arr})
    assert np.array_equal(back["a"], arr)  # type: ignore[index]


def test_typed_modes_never_produce_pickles() -> None:
    typed = wire.ENCODING_TYPED_ONLY
    assert roundtrip([1, {"x": 2.5}, "s", (3, 4)], typed) == [1, {"x": 2.5}, "s", [3, 4]]
    with pytest.raises(wire.EncodingError, match=r"builtins\.set"):
        wire.encode({1, 2}, typed)
    value, _ = wire.encode({1, 2}, wire.ENCODING_TYPED_OR_REPR)
    assert value.WhichOneof("kind") == "opaque_value"
    assert value.opaque_value.type_name == "builtins.set" and value.opaque_value.repr == "{1, 2}"


def test_malformed_values_name_the_field() -> None:
    with pytest.raises(wire.DecodingError, match="value: no kind set"):
        wire.decode(wire.pb.Value())
    bad = wire.pb.Value(
        array_value=wire.pb.NDArray(dtype="<f8", shape=[3], data=wire.pb.Buffer(inline=b"12"))
    )
    with pytest.raises(wire.DecodingError, match=r"value.array_value.data: 2 bytes, but shape \[3\]"):
        wire.decode(bad)
    with pytest.raises(wire.DecodingError, match="not a fixed-size numeric"):
        wire.decode(wire.pb.Value(array_value=wire.pb.NDArray(dtype="|O", shape=[0])))
    with pytest.raises(wire.DecodingError, match="unknown blob"):
        wire.decode(
            wire.pb.Value(
                array_value=wire.pb.NDArray(
                    dtype="<f8",
                    shape=[1],
                    data=wire.pb.Buffer(blob=wire.pb.BlobSlice(blob_id="nope", length=8)),
                )
            )
        )


def test_data_chunks_are_valid_protobuf() -> None:
    raw = blobstream.encode_data_chunk(b"abc" * 1000)
    assert wire.pb.BlobChunk.FromString(raw).data == b"abc" * 1000
    assert bytes(blobstream.parse_data_chunk(raw)) == b"abc" * 1000
    with pytest.raises(wire.DecodingError):
        blobstream.parse_data_chunk(raw[:-1])


def test_partition_matches_ipyparallel() -> None:
    assert [len(p) for p in partition(list(range(1000)), 7)] == [143] * 6 + [142]
    assert partition_bounds(10, 4) == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert partition([1, 2], 4) == [[1], [2], [], []]
