"""Reading Values: `pxgrpc.v1.Value` messages back into Python objects, and the blobs they use.

Part of the wire layer (`pxgrpc.wire` re-exports everything here: callers write `wire.decode`);
it takes the message classes from `pxgrpc.messages`. The rules for typed arrays (which dtypes any
language can read) live here because reading and checking both enforce them.
"""

from __future__ import annotations

import math
import pickle
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from pxgrpc import messages as pb
from pxgrpc.blobstream import DecodingError, IncomingBlob

#: Largest inline buffer a peer may send (`Buffer.inline`, `Value.bytes_value`).
MAX_INLINE = 1024 * 1024
#: The `NDArray.dtype` strings any language can read: byte order, kind, item size.
TYPED_DTYPE_RE = re.compile(r"^[<>|=]?(b1|[iu](1|2|4|8)|f(2|4|8)|c(8|16))$")


class UnknownBlobError(DecodingError):
    """A `Value` references a blob its reader does not have (gRPC NOT_FOUND)."""


def is_typed_dtype(dtype: np.dtype[Any]) -> bool:
    """Whether arrays of `dtype` travel as an `NDArray` (fixed-size numbers and bools)."""
    return not dtype.fields and TYPED_DTYPE_RE.match(dtype.str) is not None


def parse_dtype(text: str, where: str) -> np.dtype[Any]:
    """The numpy dtype an `NDArray.dtype` string names; DecodingError naming `where` if none."""
    if TYPED_DTYPE_RE.match(text) is None:
        raise DecodingError(
            f"{where}: {text!r} is not a fixed-size numeric or bool dtype (e.g. '<f8', '<i4', '|u1', '|b1')"
        )
    return np.dtype(text)


#: The dtypes of `NDArray.dtype` strings met so far (checked once each).
_DTYPES: dict[str, np.dtype[Any]] = {}

# --- decoding -------------------------------------------------------------------------------------

BlobMap = dict[str, IncomingBlob]


def blob_ids_of(value: pb.Value) -> set[str]:
    """Every blob a Value references (walks lists and maps)."""
    found: set[str] = set()
    _collect_blobs(value, found)
    return found


def blob_ids_of_action(action: pb.Action) -> set[str]:
    """Every blob the values of a push or apply action reference."""
    kind = action.WhichOneof("kind")
    if kind == "push":
        values = list(action.push.namespace.values())
    elif kind == "apply":
        values = [action.apply.function, *action.apply.args, *action.apply.kwargs.values()]
    else:
        return set()
    found: set[str] = set()
    for value in values:
        _collect_blobs(value, found)
    return found


def _collect_blobs(value: pb.Value, found: set[str]) -> None:
    kind = value.WhichOneof("kind")
    if kind == "array_value":
        _collect_buffer(value.array_value.data, found)
    elif kind == "large_bytes_value":
        _collect_buffer(value.large_bytes_value, found)
    elif kind == "pickled_value":
        _collect_buffer(value.pickled_value.data, found)
        for buf in value.pickled_value.buffers:
            _collect_buffer(buf, found)
    elif kind == "list_value":
        for item in value.list_value.items:
            _collect_blobs(item, found)
    elif kind == "map_value":
        for item in value.map_value.entries.values():
            _collect_blobs(item, found)


def _collect_buffer(buf: pb.Buffer, found: set[str]) -> None:
    if buf.WhichOneof("location") == "blob":
        found.add(buf.blob.blob_id)


def read_buffer(buf: pb.Buffer, blobs: BlobMap, where: str) -> memoryview | bytes:
    """The bytes a Buffer designates (a view into a received blob when it lives in one)."""
    location = buf.WhichOneof("location")
    if location == "inline":
        return buf.inline
    if location == "blob":
        blob = blobs.get(buf.blob.blob_id)
        if blob is None:
            raise DecodingError(f"{where}: unknown blob {buf.blob.blob_id!r}")
        return blob.slice(buf.blob)
    return b""


def decode(value: pb.Value, blobs: BlobMap | None = None, where: str = "value") -> Any:
    """Turn a Value back into a Python object. `where` names the field in error messages."""
    blobs = {} if blobs is None else blobs
    kind = value.WhichOneof("kind")
    if kind == "null_value":
        return None
    if kind == "bool_value":
        return value.bool_value
    if kind == "int_value":
        return value.int_value
    if kind == "float_value":
        return value.float_value
    if kind == "string_value":
        return value.string_value
    if kind == "bytes_value":
        return value.bytes_value
    if kind == "large_bytes_value":
        return bytes(read_buffer(value.large_bytes_value, blobs, f"{where}.large_bytes_value"))
    if kind == "list_value":
        return [
            decode(v, blobs, f"{where}.list_value.items[{i}]") for i, v in enumerate(value.list_value.items)
        ]
    if kind == "map_value":
        return {k: decode(v, blobs, f"{where}.map_value[{k!r}]") for k, v in value.map_value.entries.items()}
    if kind == "array_value":
        return _decode_array(value.array_value, blobs, f"{where}.array_value")
    if kind == "pickled_value":
        return _decode_pickle(value.pickled_value, blobs, f"{where}.pickled_value")
    if kind == "opaque_value":
        return OpaqueObject(value.opaque_value.type_name, value.opaque_value.repr)
    raise DecodingError(f"{where}: no kind set (one of null_value, int_value, ... is required)")


def array_dtype(text: str, where: str) -> np.dtype[Any]:
    """The dtype of an `NDArray.dtype` (`where` names the NDArray in the error), remembered:
    the same few dtypes come again and again."""
    dtype = _DTYPES.get(text)
    if dtype is None:
        dtype = _DTYPES[text] = parse_dtype(text, f"{where}.dtype")
    return dtype


def _decode_array(msg: pb.NDArray, blobs: BlobMap, where: str) -> np.ndarray:
    dtype = array_dtype(msg.dtype, where)
    shape = tuple(msg.shape)
    if shape and min(shape) < 0:
        raise DecodingError(f"{where}.shape: negative dimension in {list(shape)}")
    data = read_buffer(msg.data, blobs, f"{where}.data")
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise DecodingError(
            f"{where}.data: {len(data)} bytes, but shape {list(shape)} of {dtype.str} needs {expected}"
        )
    if isinstance(data, bytes):
        return np.frombuffer(data, dtype=dtype).reshape(shape).copy()
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _decode_pickle(msg: pb.Pickled, blobs: BlobMap, where: str) -> Any:
    data = read_buffer(msg.data, blobs, f"{where}.data")
    buffers = [read_buffer(b, blobs, f"{where}.buffers[{i}]") for i, b in enumerate(msg.buffers)]
    return pickle.loads(data, buffers=[_writable(b) for b in buffers])


def _writable(buf: memoryview | bytes) -> memoryview | bytearray:
    # Inline buffers arrive as immutable bytes; arrays unpickled on them would be read-only.
    return bytearray(buf) if isinstance(buf, bytes) else buf


@dataclass(frozen=True)
class OpaqueObject:
    """A remote Python object that could not be sent as data: its type name and repr."""

    type_name: str
    repr: str

    def __repr__(self) -> str:
        return self.repr
