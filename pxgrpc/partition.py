"""How scatter splits a sequence across engines (ipyparallel's contiguous partition)."""

from __future__ import annotations

from collections.abc import Sequence
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
