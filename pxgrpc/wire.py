"""The wire layer: with `pxgrpc.messages`, the only code that imports the generated protobuf code.

It turns Python values into `pxgrpc.v1.Value` messages and back, and moves large buffers as
*blobs*: streams of `BlobChunk` messages that `pxgrpc.blobstream` builds and parses by hand so that
the controller can relay them as raw bytes (no protobuf parse, no copy per hop).

`pxgrpc.messages` gathers the message classes; this module adds the enum values, service names,
descriptors and stubs. Everything else in pxgrpc takes the message classes from here
(`wire.pb.Task`, ...), except `pxgrpc.blobstream`, which this module builds on and which therefore
imports `pxgrpc.messages` itself.
"""

from __future__ import annotations

import math
import pickle
import re
import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cloudpickle
import numpy as np

from pxgrpc import messages
from pxgrpc._proto import (
    controller_pb2,
    controller_pb2_grpc,
    engine_pb2,
    engine_pb2_grpc,
    task_pb2,
    value_pb2,
)

# Malformed Values and malformed blob streams raise the same error: callers catch `wire.DecodingError`;
# blob ids look the same in a `BlobSlice` as in a blob stream: `wire.BLOB_ID_RE`.
from pxgrpc.blobstream import BLOB_ID_RE as BLOB_ID_RE
from pxgrpc.blobstream import DecodingError as DecodingError
from pxgrpc.blobstream import IncomingBlob, OutgoingBlob

#: The message classes: `wire.pb.Task`, `wire.pb.Value`, ...
pb = messages

# Enum values, as plain ints.
TASK_OK = task_pb2.TASK_STATUS_OK
TASK_ERROR = task_pb2.TASK_STATUS_ERROR
TASK_ABORTED = task_pb2.TASK_STATUS_ABORTED
TASK_ENGINE_DIED = task_pb2.TASK_STATUS_ENGINE_DIED
STDOUT = task_pb2.OUTPUT_STREAM_STDOUT
STDERR = task_pb2.OUTPUT_STREAM_STDERR
ENCODING_PICKLE = task_pb2.RESULT_ENCODING_PICKLE
ENCODING_TYPED_ONLY = task_pb2.RESULT_ENCODING_TYPED_ONLY
ENCODING_TYPED_OR_REPR = task_pb2.RESULT_ENCODING_TYPED_OR_REPR
ENGINE_IDLE = controller_pb2.ENGINE_STATE_IDLE
ENGINE_BUSY = controller_pb2.ENGINE_STATE_BUSY
ENGINE_DEAD = controller_pb2.ENGINE_STATE_DEAD

CONTROLLER_SERVICE = "pxgrpc.v1.Controller"
ENGINE_SERVICE = "pxgrpc.v1.Engine"
ENGINE_DATA_SERVICE = "pxgrpc.v1.EngineData"
controller_descriptor = controller_pb2.DESCRIPTOR
engine_descriptor = engine_pb2.DESCRIPTOR
ControllerStub = controller_pb2_grpc.ControllerStub
EngineStub = engine_pb2_grpc.EngineStub

#: Buffers larger than this travel in a blob rather than inside the message.
INLINE_LIMIT = 256 * 1024
#: Largest inline buffer a peer may send (`Buffer.inline`, `Value.bytes_value`).
MAX_INLINE = 1024 * 1024
#: Largest protobuf message either side accepts (chunks and batches stay far below).
MAX_MESSAGE = 64 * 1024 * 1024

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
ALLOWED_DTYPE_KINDS = frozenset("biufc")
#: The `NDArray.dtype` strings any language can read: byte order, kind, item size.
TYPED_DTYPE_RE = re.compile(r"^[<>|=]?(b1|[iu](1|2|4|8)|f(2|4|8)|c(8|16))$")
#: Deepest nesting of lists and maps the typed result encodings produce.
MAX_DEPTH = 100


class EncodingError(ValueError):
    """A value cannot be encoded the way the reader asked (e.g. typed-only for a Python object)."""


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


# --- encoding -------------------------------------------------------------------------------------


class Encoder:
    """Encodes Python objects as `Value`s, moving large buffers into one outgoing blob.

    mode: ENCODING_PICKLE (typed for plain scalars and arrays, cloudpickle otherwise: what Python
    peers want), ENCODING_TYPED_ONLY (EncodingError for Python-only objects) or
    ENCODING_TYPED_OR_REPR (an `Opaque` repr for them).
    """

    def __init__(self, mode: int = ENCODING_PICKLE) -> None:
        self.mode = mode
        self.blob: OutgoingBlob | None = None

    def buffer(self, data: memoryview | bytes) -> value_pb2.Buffer:
        """A Buffer message for `data`: inline when small, else a slice of the outgoing blob."""
        out = value_pb2.Buffer()
        self.fill_buffer(out, data)
        return out

    def fill_buffer(self, out: value_pb2.Buffer, data: memoryview | bytes) -> None:
        """Point an (empty) Buffer field at `data` (inline when small, else in the blob)."""
        if type(data) is bytes and len(data) <= INLINE_LIMIT:
            out.inline = data
            return
        view = memoryview(data)
        if view.nbytes <= INLINE_LIMIT:
            out.inline = view.tobytes()
            return
        if self.blob is None:
            self.blob = OutgoingBlob()
        out.blob.CopyFrom(self.blob.add(view))

    def encode(self, obj: Any) -> value_pb2.Value:
        """Encode one object."""
        value = value_pb2.Value()
        self._encode_into(obj, value, depth=0)
        return value

    def encode_into(self, obj: Any, value: value_pb2.Value) -> None:
        """Encode one object into an (empty) Value that is part of a larger message."""
        self._encode_into(obj, value, depth=0)

    def _encode_into(self, obj: Any, value: value_pb2.Value, depth: int) -> None:
        if obj is None:
            value.null_value.SetInParent()
        elif obj is True or obj is False:
            value.bool_value = obj
        elif type(obj) is int and INT64_MIN <= obj <= INT64_MAX:
            value.int_value = obj
        elif type(obj) is float:
            value.float_value = obj
        elif type(obj) is str and _utf8_ok(obj):
            value.string_value = obj
        elif type(obj) is bytes:
            if len(obj) <= INLINE_LIMIT:
                value.bytes_value = obj
            else:
                self.fill_buffer(value.large_bytes_value, obj)
        elif isinstance(obj, np.ndarray) and is_typed_dtype(obj.dtype):
            self._encode_array(obj, value.array_value)
        elif self.mode == ENCODING_PICKLE:
            self._encode_pickle(obj, value.pickled_value)
        elif depth >= MAX_DEPTH:
            self._untyped(obj, value, f"a value nested deeper than {MAX_DEPTH} lists or dicts")
        else:
            self._encode_typed_container(obj, value, depth)

    def _encode_typed_container(self, obj: Any, value: value_pb2.Value, depth: int) -> None:
        """Typed modes: lists, dicts and numpy scalars natively; the rest by `_untyped`."""
        if isinstance(obj, list | tuple):
            items = value.list_value.items
            for item in obj:
                self._encode_into(item, items.add(), depth + 1)
            value.list_value.SetInParent()
        elif isinstance(obj, dict):
            bad_key = next((k for k in obj if type(k) is not str), None)
            if bad_key is not None:
                self._untyped(obj, value, f"a dict with a {_qualname(bad_key)} key (map keys are strings)")
                return
            entries = value.map_value.entries
            for key, item in obj.items():
                self._encode_into(item, entries[key], depth + 1)
            value.map_value.SetInParent()
        elif isinstance(obj, np.generic) and type(obj.item()) in (bool, int, float, complex, str, bytes):
            self._encode_into(obj.item(), value, depth + 1)
        elif isinstance(obj, np.ndarray) and obj.dtype.kind in "OUS":
            self._encode_into(obj.tolist(), value, depth + 1)
        elif isinstance(obj, bytearray | memoryview):
            self._encode_into(bytes(obj), value, depth)
        elif type(obj) is complex:
            self._encode_array(np.asarray(obj), value.array_value)  # a 0-d "<c16" array
        elif type(obj) is int:
            self._untyped(obj, value, f"the int {_safe_repr(obj)[:40]} (more than 64 bits)")
        else:
            self._untyped(obj, value, f"a {_qualname(obj)}")

    def _untyped(self, obj: Any, value: value_pb2.Value, what: str) -> None:
        """An object with no typed encoding: its repr (TYPED_OR_REPR) or an EncodingError."""
        if self.mode == ENCODING_TYPED_OR_REPR:
            value.opaque_value.type_name = _qualname(obj)
            value.opaque_value.repr = _safe_repr(obj)
            return
        raise EncodingError(
            f"{what} has no typed encoding; ask for RESULT_ENCODING_TYPED_OR_REPR "
            "to get its repr, or convert it to plain data on the engine"
        )

    def _encode_array(self, arr: np.ndarray, out: value_pb2.NDArray) -> None:
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        if not arr.flags.c_contiguous:
            arr = arr.copy(order="C")  # (np.ascontiguousarray would make a 0-d array 1-d)
        out.dtype = arr.dtype.str
        out.shape.extend(arr.shape)
        self.fill_buffer(out.data, memoryview(arr).cast("B") if arr.size else b"")  # type: ignore[arg-type]

    def _encode_pickle(self, obj: Any, out: value_pb2.Pickled) -> None:
        buffers: list[pickle.PickleBuffer] = []
        if _is_plain(obj):
            data = pickle.dumps(obj, protocol=5)  # the same bytes, without cloudpickle's set-up cost
        else:
            data = cloudpickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
        self.fill_buffer(out.data, data)
        for buf in buffers:
            self.fill_buffer(out.buffers.add(), buf.raw())
        out.type_name = _qualname(obj)


#: Types that plain pickle writes just as cloudpickle would (no code, no classes by value).
_PLAIN_SCALARS = frozenset({type(None), bool, int, float, complex, str, bytes, range})
_PLAIN_CONTAINERS = frozenset({list, tuple, set, frozenset})
#: Containers up to this size are checked item by item; larger ones go to cloudpickle, whose
#: set-up cost is small next to their pickling.
_PLAIN_CHECK_LIMIT = 64


def _is_plain(obj: Any, depth: int = 0) -> bool:
    """Whether `obj` is builtin scalars in small builtin containers (at most two levels)."""
    kind = type(obj)
    if kind in _PLAIN_SCALARS:
        return True
    if depth >= 2 or (kind not in _PLAIN_CONTAINERS and kind is not dict) or len(obj) > _PLAIN_CHECK_LIMIT:
        return False
    if kind is dict:
        return all(type(k) in _PLAIN_SCALARS and _is_plain(v, depth + 1) for k, v in obj.items())
    return all(_is_plain(item, depth + 1) for item in obj)


def _utf8_ok(text: str) -> bool:
    """False for strings protobuf cannot carry (lone surrogates): they travel pickled or fail."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _qualname(obj: Any) -> str:
    cls = type(obj)
    name = _qualnames.get(cls)
    if name is None:
        name = _qualnames[cls] = f"{cls.__module__}.{cls.__qualname__}"
    return name


_qualnames: weakref.WeakKeyDictionary[type, str] = weakref.WeakKeyDictionary()


def _safe_repr(obj: Any) -> str:
    try:
        text = repr(obj)
    except Exception as exc:  # noqa: BLE001 - a broken __repr__ must not break the reply
        text = f"<{_qualname(obj)} (repr failed: {exc!r})>"
    return text[:4096]


def encode(obj: Any, mode: int = ENCODING_PICKLE) -> tuple[value_pb2.Value, OutgoingBlob | None]:
    """Encode `obj`; return the Value and the blob its large buffers need (or None)."""
    encoder = Encoder(mode)
    return encoder.encode(obj), encoder.blob


# --- decoding -------------------------------------------------------------------------------------

BlobMap = dict[str, IncomingBlob]


def blob_ids_of(value: value_pb2.Value) -> set[str]:
    """Every blob a Value references (walks lists and maps)."""
    found: set[str] = set()
    _collect_blobs(value, found)
    return found


def blob_ids_of_action(action: task_pb2.Action) -> set[str]:
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


def _collect_blobs(value: value_pb2.Value, found: set[str]) -> None:
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


def _collect_buffer(buf: value_pb2.Buffer, found: set[str]) -> None:
    if buf.WhichOneof("location") == "blob":
        found.add(buf.blob.blob_id)


def read_buffer(buf: value_pb2.Buffer, blobs: BlobMap, where: str) -> memoryview | bytes:
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


def decode(value: value_pb2.Value, blobs: BlobMap | None = None, where: str = "value") -> Any:
    """Turn a Value back into a Python object. `where` names the field in error messages."""
    blobs = blobs or {}
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


def _decode_array(msg: value_pb2.NDArray, blobs: BlobMap, where: str) -> np.ndarray:
    dtype = parse_dtype(msg.dtype, f"{where}.dtype")
    shape = tuple(msg.shape)
    if any(n < 0 for n in shape):
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


def _decode_pickle(msg: value_pb2.Pickled, blobs: BlobMap, where: str) -> Any:
    data = read_buffer(msg.data, blobs, f"{where}.data")
    buffers = [read_buffer(b, blobs, f"{where}.buffers[{i}]") for i, b in enumerate(msg.buffers)]
    return pickle.loads(data, buffers=[_writable(b) for b in buffers])


def _writable(buf: memoryview | bytes) -> memoryview | bytearray:
    # Inline buffers arrive as immutable bytes; arrays unpickled on them would be read-only.
    return bytearray(buf) if isinstance(buf, bytes) else buf


# --- validation of values from other peers --------------------------------------------------------

#: The size of a blob by id: None when unknown, -1 while its header has not arrived.
BlobSizes = Callable[[str], int | None]


def validate_value(value: value_pb2.Value, where: str = "value", blob_size: BlobSizes | None = None) -> None:
    """Check a Value a client sent, before any engine sees it.

    Raises DecodingError naming the field (`where` and the path inside the value, e.g.
    ``namespace['x'].list_value.items[2].array_value.shape``) when the value is malformed, and
    UnknownBlobError when it references a blob that `blob_size` does not know. The contents of
    `Pickled` values are not inspected (only Python peers make them).
    """
    kind = value.WhichOneof("kind")
    if kind is None:
        raise DecodingError(f"{where}: no kind set (one of null_value, int_value, ... is required)")
    if kind == "list_value":
        for i, item in enumerate(value.list_value.items):
            validate_value(item, f"{where}.list_value.items[{i}]", blob_size)
    elif kind == "map_value":
        for key, item in value.map_value.entries.items():
            validate_value(item, f"{where}.map_value[{key!r}]", blob_size)
    elif kind == "bytes_value" and len(value.bytes_value) > MAX_INLINE:
        raise DecodingError(
            f"{where}.bytes_value: {len(value.bytes_value)} bytes is more than {MAX_INLINE}; "
            "send large_bytes_value with the data in a blob"
        )
    elif kind == "large_bytes_value":
        _validate_buffer(value.large_bytes_value, f"{where}.large_bytes_value", blob_size)
    elif kind == "array_value":
        _validate_array(value.array_value, f"{where}.array_value", blob_size)
    elif kind == "pickled_value":
        _validate_buffer(value.pickled_value.data, f"{where}.pickled_value.data", blob_size)
        for i, buf in enumerate(value.pickled_value.buffers):
            _validate_buffer(buf, f"{where}.pickled_value.buffers[{i}]", blob_size)
    elif kind == "opaque_value":
        raise DecodingError(
            f"{where}.opaque_value: Opaque values only travel from engines to clients; send the data itself"
        )


def _validate_array(array: value_pb2.NDArray, where: str, blob_size: BlobSizes | None) -> None:
    dtype = parse_dtype(array.dtype, f"{where}.dtype")
    if any(n < 0 for n in array.shape):
        raise DecodingError(f"{where}.shape: negative dimension in {list(array.shape)}")
    expected = math.prod(array.shape) * dtype.itemsize
    length = _validate_buffer(array.data, f"{where}.data", blob_size)
    if length != expected:
        raise DecodingError(
            f"{where}.data: {length} bytes, but shape {list(array.shape)} of {dtype.str} needs {expected}"
        )


def _validate_buffer(buf: value_pb2.Buffer, where: str, blob_size: BlobSizes | None) -> int:
    """Check one Buffer; return the number of bytes it designates."""
    location = buf.WhichOneof("location")
    if location == "inline":
        if len(buf.inline) > MAX_INLINE:
            raise DecodingError(
                f"{where}.inline: {len(buf.inline)} bytes is more than {MAX_INLINE}; put the data in a blob"
            )
        return len(buf.inline)
    if location is None:
        return 0
    ref = buf.blob
    if not BLOB_ID_RE.match(ref.blob_id):
        raise DecodingError(f"{where}.blob.blob_id: {ref.blob_id!r} is not 1-64 characters of [A-Za-z0-9_-]")
    if ref.offset < 0 or ref.length < 0:
        raise DecodingError(f"{where}.blob: offset {ref.offset} and length {ref.length} must not be negative")
    if blob_size is not None:
        size = blob_size(ref.blob_id)
        if size is None:
            raise UnknownBlobError(
                f"{where}.blob.blob_id: no blob {ref.blob_id!r} "
                "(upload it, and wait for the UploadReply, first)"
            )
        if size >= 0 and ref.offset + ref.length > size:
            raise DecodingError(
                f"{where}.blob: bytes {ref.offset}..{ref.offset + ref.length} are outside blob "
                f"{ref.blob_id} of {size} bytes"
            )
    return ref.length


@dataclass(frozen=True)
class OpaqueObject:
    """A remote Python object that could not be sent as data: its type name and repr."""

    type_name: str
    repr: str

    def __repr__(self) -> str:
        return self.repr


def python_version() -> str:
    return ".".join(map(str, sys.version_info[:3]))
