"""How scatter and map split a sequence across engines (ipyparallel's contiguous partition), and
how gather and map join the parts again."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def partition_bounds(length: int, parts: int) -> list[tuple[int, int]]:
    """`(start, stop)` of each of `parts` contiguous chunks of a sequence of `length` items.

    The first `length % parts` chunks are one item longer, as in ipyparallel:

    >>> partition_bounds(10, 3)
    [(0, 4), (4, 7), (7, 10)]
    """
    if parts <= 0:
        raise ValueError(f"cannot partition into {parts} parts")
    base, extra = divmod(length, parts)
    bounds = []
    start = 0
    for p in range(parts):
        stop = start + base + (1 if p < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def partition(seq: Sequence[Any], parts: int) -> list[Any]:
    """Split `seq` into `parts` contiguous slices (views for numpy arrays)."""
    return [seq[a:b] for a, b in partition_bounds(len(seq), parts)]


def map_chunk(f: Callable[..., Any], *chunks: Sequence[Any]) -> list[Any]:
    """What an engine runs for one chunk of a map."""
    return list(map(f, *chunks))


def chunk(seq: Sequence[Any], start: int, stop: int) -> Any:
    """`seq[start:stop]` for one task of a map; a short slice of a range becomes a list (the
    mapped function sees the same items, and a list of a few ints pickles several times faster)."""
    part = seq[start:stop]
    return list(part) if type(part) is range and len(part) <= 64 else part


def join_parts(parts: list[Any]) -> Any:
    """Join gathered partitions: arrays with numpy, sequences into one list (ipyparallel's rule)."""
    if not parts:
        return []
    first = parts[0]
    if type(first).__module__ == "numpy" and type(first).__name__ == "ndarray":
        import numpy as np

        whole = tiled(parts)
        return whole if whole is not None else np.concatenate(parts)
    if isinstance(first, list | tuple):
        joined: list[Any] = []
        for part in parts:
            joined.extend(part)  # (twice as fast as list(itertools.chain(...)) for long parts)
        return joined
    return parts


def tiled(parts: list[Any]) -> Any:
    """The array that array `parts` tile in order, when they are consecutive slices of one
    (a gather downloads its parts into one array: `pxgrpc.client.assemble`), else None."""
    import numpy as np

    base = parts[0].base
    if type(base) is not np.ndarray or not base.flags.c_contiguous:
        return None
    if base.base is not None and not getattr(base.base, "whole_buffer", False):
        return None  # (a view of a larger buffer; a shared-memory mapping made for it is fine)
    address = base.ctypes.data
    rows = 0
    for part in parts:
        if type(part) is not np.ndarray or part.base is not base or part.ctypes.data != address:
            return None
        if part.ndim != base.ndim or part.shape[1:] != base.shape[1:] or not part.flags.c_contiguous:
            return None
        address += part.nbytes
        rows += len(part)
    return base if rows == len(base) else None
