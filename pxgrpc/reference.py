"""`Reference("name")`: an argument that stands for an engine's variable when the task runs.

>>> dv.push({"data": big_array})
>>> dv.apply_sync(numpy.sum, pxgrpc.Reference("data"))     # sums each engine's own `data`

Engines resolve References in the arguments of `apply` and `map` (also nested in lists,
tuples, sets and dict values). Light to import: engines load it to unpickle References.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: How many References this process has unpickled: engines look for References in a task's
#: arguments only when this moved while decoding them (no scan of every big argument).
loaded_count = 0


class Reference:
    """A name (`"x"`, or dotted: `"config.path"`) in the engine's namespace, looked up when the
    task that takes it as an argument runs there."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        if not isinstance(name, str):
            raise TypeError(f"Reference: the name must be a str, not {type(name).__name__}")
        if not name or not all(part.isidentifier() for part in name.split(".")):
            raise ValueError(f"Reference: {name!r} is not a variable name (or dotted name)")
        self.name = name

    def __repr__(self) -> str:
        return f"<Reference: {self.name!r}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reference) and other.name == self.name

    def __hash__(self) -> int:
        return hash((Reference, self.name))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_unpickle, (self.name,))


def _unpickle(name: str) -> Reference:
    global loaded_count
    loaded_count += 1
    return Reference(name)


def resolve(value: Any, lookup: Callable[[str], Any]) -> Any:
    """`value` with every Reference in it (nested in lists, tuples, sets, dict values) replaced
    by `lookup(name)`; containers without References are returned as they are."""
    kind = type(value)
    if kind is Reference:
        return lookup(value.name)
    if kind in (list, tuple, set, frozenset):
        items = [resolve(item, lookup) for item in value]
        if all(new is old for new, old in zip(items, value, strict=True)):
            return value
        return kind(items)
    if kind is dict:
        resolved = {key: resolve(item, lookup) for key, item in value.items()}
        if all(resolved[key] is item for key, item in value.items()):
            return value
        return resolved
    return value
