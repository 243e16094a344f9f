"""Task dependencies, as ipyparallel spells them: `Dependency`, `@depend`, `@require`.

Two kinds, for a `LoadBalancedView`:

- On other tasks (`view.set_flags(after=..., follow=...)`, `view.temp_flags(...)`): a
  `Dependency` is a set of task ids (from AsyncResults or `ar.msg_ids`). `after`: the task
  starts once they are done; `follow`: it runs on the engine where they ran. The client holds
  such tasks until then (see `pxgrpc.client.dependencies`).
- On the engine (`@require("numpy")`, `@depend(condition, *args)`): checked where the task
  lands, before it runs; an engine that fails the check hands the task on to another one.

>>> @pxgrpc.require("numpy")
... def norm(a):
...     return numpy.linalg.norm(a)
>>> with lview.temp_flags(after=[ar1, ar2], timeout=10):
...     ar3 = lview.apply(combine)

Light to import: engines load it to unpickle the functions `@require`/`@depend` make.
"""

from __future__ import annotations

import functools
import importlib
import types
from collections.abc import Callable, Container, Iterable, Mapping
from typing import Any


class UnmetDependency(Exception):
    """Raised on an engine when a task's `@require`/`@depend` check fails there.

    The client sees it by its name (`ename == "UnmetDependency"`) and tries another engine; the
    error users catch is `pxgrpc.error.ImpossibleDependency`, once no engine is left.
    """


class Dependency(set[str]):
    """A set of task ids a task depends on, and what counts as met.

    `dependencies`: task ids, AsyncResults (all their task ids), or a dict from `as_dict()`.
    `all`: met when all of them are done (else: any one). `success`/`failure`: whether tasks
    that succeeded / failed count as done. With the defaults (all, success, not failure), the
    task fails with `ImpossibleDependency` as soon as one of them fails.
    """

    def __init__(
        self, dependencies: Any = (), all: bool = True, success: bool = True, failure: bool = False
    ) -> None:
        if isinstance(dependencies, Mapping):
            all = dependencies.get("all", all)
            success = dependencies.get("success", success)
            failure = dependencies.get("failure", failure)
            dependencies = dependencies.get("dependencies", [])
        if not (success or failure):
            raise ValueError("Dependency: it must count successes, failures or both as done")
        super().__init__(task_ids(dependencies))
        self.all = bool(all)
        self.success = bool(success)
        self.failure = bool(failure)

    def __repr__(self) -> str:
        return f"Dependency({sorted(self)}, all={self.all}, success={self.success}, failure={self.failure})"

    def _counts(self, task_id: str, succeeded: Container[str], failed: Container[str]) -> bool:
        return (self.success and task_id in succeeded) or (self.failure and task_id in failed)

    def _spoils(self, task_id: str, succeeded: Container[str], failed: Container[str]) -> bool:
        return (not self.success and task_id in succeeded) or (not self.failure and task_id in failed)

    def check(self, succeeded: Container[str], failed: Container[str]) -> bool:
        """Whether the dependency is met, given the tasks that succeeded and failed so far."""
        if not self:
            return True
        counted = (self._counts(t, succeeded, failed) for t in self)
        return all(counted) if self.all else any(counted)

    def unreachable(self, succeeded: Container[str], failed: Container[str]) -> bool:
        """Whether it can never be met, given the tasks finished so far."""
        if not self:
            return False
        spoilt = (self._spoils(t, succeeded, failed) for t in self)
        return any(spoilt) if self.all else all(spoilt)

    def as_dict(self) -> dict[str, Any]:
        """A plain dict (JSON-able) that `Dependency(d)` reads back."""
        return {
            "dependencies": sorted(self),
            "all": self.all,
            "success": self.success,
            "failure": self.failure,
        }


def task_ids(dependencies: Any) -> list[str]:
    """The task ids in a dependency given as an id, an AsyncResult, or an iterable of those."""
    if dependencies is None:
        return []
    if isinstance(dependencies, str) or hasattr(dependencies, "msg_ids"):
        dependencies = [dependencies]
    if not isinstance(dependencies, Iterable):
        raise TypeError(f"invalid dependency: {type(dependencies).__name__} (give task ids or AsyncResults)")
    ids: list[str] = []
    for dep in dependencies:
        if isinstance(dep, str):
            ids.append(dep)
        elif isinstance(getattr(dep, "msg_ids", None), list):
            ids.extend(dep.msg_ids)
        else:
            raise TypeError(f"invalid dependency: {type(dep).__name__} (give task ids or AsyncResults)")
    return ids


class Dependent:
    """A function whose task needs a condition met on the engine (made by `depend`/`require`).

    Before the function runs, the engine imports `modules` and binds `objects` in its namespace,
    then calls `condition(*args, **kwargs)` if there is one; an ImportError, or the condition
    returning False or raising UnmetDependency, raises `UnmetDependency` there.
    """

    def __init__(
        self,
        f: Callable[..., Any],
        condition: Callable[..., Any] | None = None,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        modules: Iterable[str] = (),
        objects: dict[str, Any] | None = None,
    ) -> None:
        self.f = f
        self.condition = condition
        self.args = args
        self.kwargs = kwargs or {}
        self.modules = list(modules)
        self.objects = objects or {}
        functools.update_wrapper(self, f)

    def check(self, namespace: dict[str, Any], bind: Callable[[Any], Any] = lambda f: f) -> None:
        """Meet the condition in `namespace` (`bind` rebinds functions to it), or raise UnmetDependency."""
        for name in self.modules:
            try:
                importlib.import_module(name)
            except ImportError as exc:
                raise UnmetDependency(f"cannot import {name}: {exc}") from None
            top = name.partition(".")[0]
            namespace[top] = importlib.import_module(top)
        for key, obj in self.objects.items():
            namespace[key] = bind(obj)
        if self.condition is not None:
            condition = bind(self.condition)
            if condition(*self.args, **self.kwargs) is False:
                name = getattr(self.condition, "__name__", "the condition")
                raise UnmetDependency(f"{name} returned False")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # Reached without the engine's own check (inside map): check in the function's globals.
        self.check(getattr(self.f, "__globals__", {}))
        return self.f(*args, **kwargs)


def depend(
    condition: Callable[..., Any], *args: Any, **kwargs: Any
) -> Callable[[Callable[..., Any]], Dependent]:
    """Decorator: the task runs only on an engine where `condition(*args, **kwargs)` is not False.

    >>> @pxgrpc.depend(lambda: os.cpu_count() >= 8)
    ... def big(): ...
    """
    return lambda f: Dependent(f, condition, args, kwargs)


def require(*objects: Any, **mapping: Any) -> Callable[[Callable[..., Any]], Dependent]:
    """Decorator: modules (names or module objects) imported, and functions (by `__name__`) or
    keyword objects bound, in the engine's namespace before the task runs; an engine that cannot
    import a module hands the task on to another.

    >>> @pxgrpc.require("numpy")
    ... def norm(a):
    ...     return numpy.linalg.norm(a, 2)
    """
    modules: list[str] = []
    bound = dict(mapping)
    for obj in objects:
        if isinstance(obj, types.ModuleType):
            obj = obj.__name__
        if isinstance(obj, str):
            if not all(part.isidentifier() for part in obj.split(".")):
                raise ValueError(f"require: {obj!r} is not a module name")
            modules.append(obj)
        elif hasattr(obj, "__name__"):
            bound[obj.__name__] = obj
        else:
            raise TypeError(
                f"require: pass modules, module names or functions; give a {type(obj).__name__} by keyword"
            )
    return lambda f: Dependent(f, modules=modules, objects=bound)
