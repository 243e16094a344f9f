"""Which engines a view or call means: `targets` (an id, a slice, a list of ids, "all" or None)
resolved against the engines registered now."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pxgrpc.client.errors import NoEnginesError

#: What a view or call may name as its engines.
Targets = int | Sequence[int] | slice | str | None


class EngineTargets:
    """Resolves `targets` to engine ids, from the engines the controller announced (no round
    trip), asking the controller afresh (`registered`) only for an id not among them."""

    def __init__(self, registered: Callable[[], list[int]], announced: Callable[[], list[int]]) -> None:
        self._registered = registered
        self._announced = announced

    def live(self, wanted: Sequence[int] = ()) -> list[int]:
        """The live engine ids as last announced; afresh when one of `wanted` is not among them."""
        live = self._announced()
        if wanted and not {i for i in wanted if i >= 0}.issubset(live):
            live = self._registered()
        return live

    def resolve(self, targets: Targets) -> tuple[list[int], bool]:
        """The engine ids `targets` names now, and whether it names one engine (`rc[0]`).

        `None` and "all" are the live engines; an int, a slice or a list of ids pick among them
        (NoEnginesError for an engine that is not there).
        """
        if targets is None or targets == "all":
            return self.live(), False
        if isinstance(targets, int):
            live = self.live([targets])
            if targets not in live and not (targets < 0 and -len(live) <= targets):
                raise NoEnginesError(f"no engine {targets} (engines: {live})")
            return [live[targets] if targets < 0 else targets], True
        if isinstance(targets, slice):
            return self.live()[targets], False
        if isinstance(targets, str):
            raise TypeError(f"targets must be engine ids, a slice, 'all' or None, not {targets!r}")
        wanted = list(targets)
        live = self.live(wanted)
        missing = [i for i in wanted if i not in live]
        if missing:
            raise NoEnginesError(f"no engine {missing[0]} (engines: {live})")
        return wanted, False
