"""Checking Values from other peers: malformed values are refused with the field they are in.

Part of the wire layer (`pxgrpc.wire.validate_value` is `validate_value` here); the controller
checks every Value a client sends with it before any engine sees it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from pxgrpc import messages as pb
from pxgrpc.blobstream import BLOB_ID_RE, DecodingError
from pxgrpc.valuedecoding import MAX_INLINE, UnknownBlobError, parse_dtype

# --- validation of values from other peers --------------------------------------------------------

#: The size of a blob by id: None when unknown, -1 while its header has not arrived.
BlobSizes = Callable[[str], int | None]


def validate_value(value: pb.Value, where: str = "value", blob_size: BlobSizes | None = None) -> None:
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


def _validate_array(array: pb.NDArray, where: str, blob_size: BlobSizes | None) -> None:
    dtype = parse_dtype(array.dtype, f"{where}.dtype")
    if any(n < 0 for n in array.shape):
        raise DecodingError(f"{where}.shape: negative dimension in {list(array.shape)}")
    expected = math.prod(array.shape) * dtype.itemsize
    length = _validate_buffer(array.data, f"{where}.data", blob_size)
    if length != expected:
        raise DecodingError(
            f"{where}.data: {length} bytes, but shape {list(array.shape)} of {dtype.str} needs {expected}"
        )


def _validate_buffer(buf: pb.Buffer, where: str, blob_size: BlobSizes | None) -> int:
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
