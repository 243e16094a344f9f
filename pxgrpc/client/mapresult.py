"""AsyncMapResult: the result of a map or gather, its parts joined into one sequence."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pxgrpc.client.asyncresult import AsyncResult
from pxgrpc.client.tasks import Reducer, TaskOutcome

if TYPE_CHECKING:
    from pxgrpc.client.client import Client


class AsyncMapResult(AsyncResult):
    """The result of map or gather: the parts are joined into one sequence.

    Iterating yields single elements, in order (or as they complete, for unordered maps).
    """

    def __init__(
        self,
        client: Client,
        task_ids: Sequence[str],
        fname: str,
        join: Reducer,
        targets: Sequence[int | None] | None = None,
        ordered: bool = True,
        sizes: Sequence[int] | None = None,
        return_exceptions: bool = False,
    ) -> None:
        self._ordered = ordered
        self._arrival: list[int] = []
        super().__init__(
            client,
            task_ids,
            fname,
            targets,
            single=False,
            reduce=join,
            sizes=sizes,
            return_exceptions=return_exceptions,
        )

    def on_result(self, outcome: TaskOutcome) -> None:
        with self._events.lock:
            self._arrival.append(self._events.index[outcome.task_id])
        super().on_result(outcome)

    def _items_at(self, i: int) -> Any:
        part = self._result_at(i)
        return [part] if isinstance(part, BaseException) else part

    def __iter__(self) -> Iterator[Any]:
        if self._ordered:
            for i in range(len(self.msg_ids)):
                yield from self._items_at(i)
            return
        seen = 0
        while seen < len(self.msg_ids):
            with self._events.lock:
                while len(self._arrival) <= seen:
                    self._events.wait()
                i = self._arrival[seen]
            seen += 1
            yield from self._items_at(i)
