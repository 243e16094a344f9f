"""The wire layer: with `pxgrpc.messages`, the only code that imports the generated protobuf code.

It turns Python values into `pxgrpc.v1.Value` messages and back, and moves large buffers as
*blobs*: streams of `BlobChunk` messages that `pxgrpc.blobstream` builds and parses by hand so that
the controller can relay them as raw bytes (no protobuf parse, no copy per hop).

`pxgrpc.messages` gathers the message classes; this module adds the enum values, service names,
descriptors and stubs. Everything else in pxgrpc takes the message classes from here
(`wire.pb.Task`, ...), except `pxgrpc.blobstream`, which this module builds on and which therefore
imports `pxgrpc.messages` itself. Reading Values back (`pxgrpc.valuedecoding`) and checking
Values from other peers (`pxgrpc.valuecheck`) have modules of their own, re-exported here.
"""

from __future__ import annotations

import pickle
import sys
import weakref
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
from pxgrpc.blobstream import OutgoingBlob

# Reading and checking Values live in their own modules; callers reach them as `wire.decode`, ...
from pxgrpc.valuecheck import BlobSizes as BlobSizes
from pxgrpc.valuecheck import validate_value as validate_value
from pxgrpc.valuedecoding import MAX_INLINE as MAX_INLINE
from pxgrpc.valuedecoding import TYPED_DTYPE_RE as TYPED_DTYPE_RE
from pxgrpc.valuedecoding import BlobMap as BlobMap
from pxgrpc.valuedecoding import OpaqueObject as OpaqueObject
from pxgrpc.valuedecoding import UnknownBlobError as UnknownBlobError
from pxgrpc.valuedecoding import array_dtype as array_dtype
from pxgrpc.valuedecoding import blob_ids_of as blob_ids_of
from pxgrpc.valuedecoding import blob_ids_of_action as blob_ids_of_action
from pxgrpc.valuedecoding import decode as decode
from pxgrpc.valuedecoding import is_typed_dtype as is_typed_dtype
from pxgrpc.valuedecoding import parse_dtype as parse_dtype
from pxgrpc.valuedecoding import read_buffer as read_buffer

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
#: Largest protobuf message either side accepts (chunks and batches stay far below).
MAX_MESSAGE = 64 * 1024 * 1024

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
ALLOWED_DTYPE_KINDS = frozenset("biufc")
#: Deepest nesting of lists and maps the typed result encodings produce.
MAX_DEPTH = 100


class EncodingError(ValueError):
    """A value cannot be encoded the way the reader asked (e.g. typed-only for a Python object)."""


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


def python_version() -> str:
    return ".".join(map(str, sys.version_info[:3]))
