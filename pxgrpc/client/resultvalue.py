"""How an AsyncResult's value is assembled from its tasks' outcomes: the values in task order
(reduced, for a map), the error raised instead, or the exceptions in place of failed values."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pxgrpc.client.errors import CompositeError, PxError
from pxgrpc.client.tasks import Reducer, TaskOutcome

Outcomes = Sequence[TaskOutcome | None]


def failures(outcomes: Outcomes) -> list[PxError]:
    """The errors of the failed tasks, in task order."""
    return [o.error for o in outcomes if o is not None and o.error is not None]


def raised_error(fname: str, errors: list[PxError], single: bool) -> PxError:
    """What waiting raises when tasks failed: a single task's own error, else a CompositeError."""
    if single and len(errors) == 1:
        return errors[0]
    return CompositeError(f"one or more exceptions raised in: {fname}", errors)


def result_value(outcomes: Outcomes, single: bool, reduce: Reducer | None) -> Any:
    """The value of tasks that all succeeded: one value (`single`), the list, or its reduction."""
    values = [o.value for o in outcomes if o is not None]
    if reduce is not None:
        return reduce(values)
    return values[0] if single else values


def value_with_errors(outcomes: Outcomes, single: bool, reduce: Reducer | None) -> Any:
    """The value with each failed task's exception in place of its value (of its chunk, in a
    map: a joined map then has one exception where the chunk's items would be)."""
    values = [o.error if o.error is not None else o.value for o in outcomes if o is not None]
    if reduce is None:
        return values[0] if single else values
    if not any(isinstance(v, BaseException) for v in values):
        return reduce(values)
    flat: list[Any] = []
    for value in values:
        if isinstance(value, BaseException):
            flat.append(value)
        else:
            flat.extend(value)
    return flat


def values_by_engine(fname: str, engine_ids: Sequence[int | None], values: list[Any]) -> dict[int, Any]:
    """`values` keyed by the engine each task ran on (ValueError if one engine ran several)."""
    if len(values) != len(engine_ids):
        raise ValueError(f"{fname}: a map result has no value per engine; use get()")
    by_engine: dict[int, Any] = {}
    for engine_id, value in zip(engine_ids, values, strict=True):
        if engine_id in by_engine or engine_id is None:
            raise ValueError(
                f"cannot build a dict: {list(engine_ids).count(engine_id)} tasks ran on engine {engine_id}"
            )
        by_engine[engine_id] = value
    return by_engine
