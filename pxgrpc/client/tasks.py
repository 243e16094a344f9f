"""What crosses the cut-off between the views and the transport, as plain Python records.

Going down: a `Job` (a view's call: which `Action` — `Execute`, `Apply`, `Push`, `Pull` — on
which engines, and how to join the results). Coming back: a `TaskOutcome` per task, and the
tasks' output, delivered to a `TaskListener` (an `AsyncResult`) in the transport's thread.
No protobuf message here: the transport writes and reads those.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pxgrpc.client.errors import PxError
from pxgrpc.dependency import Dependency


@dataclass
class Execute:
    """Run code in the engine's namespace."""

    code: str
    silent: bool = False


@dataclass
class Apply:
    """Call `function(*args, **kwargs)` on the engine."""

    function: Any
    args: Sequence[Any] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Push:
    """Assign variables in the engine's namespace."""

    namespace: dict[str, Any]


@dataclass
class Pull:
    """Read variables of the engine's namespace (`single`: one name, its value alone)."""

    names: list[str]
    single: bool = False


Action = Execute | Apply | Push | Pull


@dataclass
class Constraints:
    """When and where a load-balanced job may run: after / on the engine of other tasks
    (`pxgrpc.dependency.Dependency`), waiting at most `timeout` s for them, and whether an
    engine may turn a task down (`@require`/`@depend`: `recheck`). See `client.dependencies`."""

    after: Dependency = field(default_factory=Dependency)
    follow: Dependency = field(default_factory=Dependency)
    timeout: float | None = None
    recheck: bool = False

    def any(self) -> bool:
        """Whether the job needs the dependency scheduler at all."""
        return bool(self.after or self.follow or self.recheck)


#: Joins the values of a job's tasks into its result (map, gather).
Reducer = Callable[[list[Any]], Any]


@dataclass
class Job:
    """One call of a view: tasks on `targets` (None: load-balanced), the same `action` on each,
    or, with `each`, one action per target (may be a generator: built when its turn comes).

    `single`: the result is the one task's value, not a list. `join`: the values joined into
    one (an `AsyncMapResult`, iterated element by element, `ordered` or as they come).

    >>> rc.submit(Job("apply", [0, 1], Apply(os.getpid)))
    <AsyncResult: apply:pending>
    """

    name: str
    targets: Sequence[int | None]
    action: Action | None = None
    each: Iterable[Action] | None = None
    single: bool = False
    join: Reducer | None = None
    ordered: bool = True
    retries: int = 0
    #: The result holds failed tasks' exceptions in place of their values, instead of raising.
    return_exceptions: bool = False
    #: Dependencies (load-balanced jobs only): the client holds the job until they are met.
    constraints: Constraints | None = None
    #: Elements per task, for a map (its result's len() and progress count elements).
    sizes: Sequence[int] | None = None
    #: Array results are downloaded into one array, built once (gather: `client.assemble`).
    assemble: bool = False


@dataclass
class TaskOutcome:
    """The end of one task on one engine, decoded."""

    task_id: str
    engine_id: int
    status: str  # "ok", "error", "aborted" or "engine_died"
    value: Any = None
    error: PxError | None = None
    execute_result: dict[str, str] | None = None
    execution_count: int = 0
    submitted: float = 0.0
    started: float = 0.0
    completed: float = 0.0
    received: float = 0.0  # (this client's clock, when the result event arrived)
    #: Bytes of the blobs the value came in (large values: the history does not pin them).
    blob_bytes: int = 0


class TaskListener(Protocol):
    """Receives the events of tasks (called from the transport's thread)."""

    def on_output(self, task_id: str, engine_id: int, stream: str, text: str) -> None: ...

    def on_display(self, task_id: str, engine_id: int, data: dict[str, str], metadata: str) -> None: ...

    def on_data(self, task_id: str, engine_id: int, data: dict[str, Any]) -> None: ...

    def on_result(self, outcome: TaskOutcome) -> None: ...
