"""Scatter and gather of typed Values on the controller, for clients in any language.

Lists split into sub-lists; arrays split along their first axis by adjusting the byte range
they designate (no copy, inline or in a blob). Gather concatenates what it can.
"""

from __future__ import annotations

import math

from pxgrpc import wire
from pxgrpc.partition import partition_bounds


def _itemsize(dtype: str) -> int:
    return wire.parse_dtype(dtype, "value.array_value.dtype").itemsize


def scatter_values(value: wire.pb.Value, parts: int) -> list[wire.pb.Value]:
    """Split a list or array Value into `parts` contiguous Values (ipyparallel's partition)."""
    kind = value.WhichOneof("kind")
    if kind == "list_value":
        items = value.list_value.items
        return [
            wire.pb.Value(list_value=wire.pb.ValueList(items=items[a:b]))
            for a, b in partition_bounds(len(items), parts)
        ]
    if kind == "array_value":
        return _scatter_array(value.array_value, parts)
    raise ValueError(f"value: scatter needs a list_value or an array_value, not {kind or 'nothing'}")


def _scatter_array(array: wire.pb.NDArray, parts: int) -> list[wire.pb.Value]:
    if not array.shape:
        raise ValueError("value.array_value.shape: cannot scatter a 0-d array")
    row = _itemsize(array.dtype) * math.prod(array.shape[1:])
    location = array.data.WhichOneof("location")
    out = []
    for a, b in partition_bounds(array.shape[0], parts):
        piece = wire.pb.NDArray(dtype=array.dtype, shape=[b - a, *array.shape[1:]])
        if location == "blob":
            ref = array.data.blob
            piece.data.blob.CopyFrom(
                wire.pb.BlobSlice(blob_id=ref.blob_id, offset=ref.offset + a * row, length=(b - a) * row)
            )
        else:
            piece.data.inline = array.data.inline[a * row : b * row]
        out.append(wire.pb.Value(array_value=piece))
    return out


def concatenate_values(values: list[wire.pb.Value]) -> wire.pb.Value:
    """Join gathered parts: lists into one list, inline arrays of one dtype along axis 0.

    Anything else comes back as a list with one item per part.
    """
    kinds = {v.WhichOneof("kind") for v in values}
    if kinds == {"list_value"}:
        joined = wire.pb.ValueList()
        for v in values:
            joined.items.extend(v.list_value.items)
        return wire.pb.Value(list_value=joined)
    if kinds == {"array_value"}:
        arrays = [v.array_value for v in values]
        same = {(a.dtype, tuple(a.shape[1:])) for a in arrays}
        inline = all(a.data.WhichOneof("location") in ("inline", None) for a in arrays)
        if len(same) == 1 and inline and all(a.shape for a in arrays):
            first = arrays[0]
            shape = [sum(a.shape[0] for a in arrays), *first.shape[1:]]
            data = b"".join(a.data.inline for a in arrays)
            return wire.pb.Value(
                array_value=wire.pb.NDArray(dtype=first.dtype, shape=shape, data=wire.pb.Buffer(inline=data))
            )
    return wire.pb.Value(list_value=wire.pb.ValueList(items=values))
