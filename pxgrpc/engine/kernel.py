"""What an engine does with a task: run code in its namespace and describe the outcome.

Runs in the engine's main thread, so that Ctrl-C style interrupts (SIGINT sent to that thread)
raise KeyboardInterrupt inside the user's code.
"""

from __future__ import annotations

import ast
import builtins
import collections
import linecache
import os
import sys
import time
import traceback
import types
from dataclasses import dataclass, field
from typing import Any

from pxgrpc import reference, sharedmem, wire
from pxgrpc.dependency import Dependent
from pxgrpc.engine.ipython import DisplaySink, EngineShell, mentions_ipython

_ENGINE_DIR = os.path.dirname(os.path.abspath(__file__))

#: How many functions sent by value an engine keeps unpickled (`Kernel._function`).
FUNCTION_CACHE = 256
#: Default values a cached function may have: what no call can change.
_IMMUTABLE = (type(None), bool, int, float, complex, str, bytes, range, type(Ellipsis))


@dataclass
class Outcome:
    """What running one task produced, before encoding."""

    value: Any = None
    error: wire.pb.RemoteException | None = None
    execute_result: dict[str, str] | None = None
    execution_count: int = 0
    started: float = field(default_factory=time.time)
    completed: float = 0.0
    #: Values a push replaced: freed only after the reply is sent (freeing a big list takes ms).
    replaced: list[Any] = field(default_factory=list)


def remote_exception(exc: BaseException) -> wire.pb.RemoteException:
    """The exception as it travels: class name, message, and the user's part of the traceback."""
    tb = exc.__traceback__
    while tb is not None and os.path.dirname(os.path.abspath(tb.tb_frame.f_code.co_filename)) == _ENGINE_DIR:
        tb = tb.tb_next
    lines = traceback.format_exception(type(exc), exc, tb)
    return wire.pb.RemoteException(ename=type(exc).__name__, evalue=str(exc), traceback=lines)


class Kernel:
    """A persistent Python namespace that runs execute/apply/push/pull actions."""

    def __init__(self, display_sink: DisplaySink | None = None) -> None:
        self.namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
        self.execution_count = 0
        main = types.ModuleType("__main__")
        main.__dict__.update(self.namespace)
        self.namespace = main.__dict__
        sys.modules["__main__"] = main
        self._main = main
        #: Where display() output goes (the engine sends it to the client as DisplayEvents).
        self.display_sink = display_sink
        self._shell: EngineShell | None = None
        # Functions from the client's __main__, unpickled, by their pickle (`_function`).
        self._functions: collections.OrderedDict[bytes, types.FunctionType] = collections.OrderedDict()

    def ipython(self) -> EngineShell:
        """The engine's IPython shell, created on first need (see pxgrpc.engine.ipython)."""
        if self._shell is None:
            self._shell = EngineShell(self._main, self._display)
        return self._shell

    def _display(self, data: dict[str, str], metadata_json: str) -> None:
        if self.display_sink is None:
            print(data.get("text/plain", ""))
        else:
            self.display_sink(data, metadata_json)

    def run(self, action: wire.pb.Action, blobs: wire.BlobMap) -> Outcome:
        """Run one action; exceptions (including KeyboardInterrupt) become the outcome's error."""
        outcome = Outcome()
        kind = action.WhichOneof("kind")
        try:
            if kind == "execute":
                self._execute(action.execute, outcome)
            elif kind == "apply":
                outcome.value = self._apply(action.apply, blobs)
            elif kind == "push":
                for name, value in action.push.namespace.items():
                    decoded = self._bind(wire.decode(value, blobs, f"push.namespace[{name!r}]"))
                    if name in self.namespace:
                        outcome.replaced.append(self.namespace[name])
                    self.namespace[name] = decoded
            elif kind == "pull":
                values = [self._lookup(name) for name in action.pull.names]
                outcome.value = values[0] if action.pull.single and len(values) == 1 else values
            else:
                raise ValueError("Task.action: no action set")
        except BaseException as exc:  # noqa: BLE001 - everything the user's code raises is reported
            if isinstance(exc, SystemExit | GeneratorExit):
                exc = RuntimeError(f"the task raised {type(exc).__name__}; the engine keeps running")
            outcome.error = remote_exception(exc)
        outcome.completed = time.time()
        return outcome

    def push_shared(self, task: wire.pb.Task) -> list[Any] | None:
        """A push whose every value is an array on a blob the task shares (`Task.shared_blobs`),
        each mapped straight into an array and bound: what `run` does with it, in a fraction of
        the steps (an engine's share of a push to many). The values it replaced; None, with
        nothing bound, for any other task, or one whose arrays cannot be mapped here (`run`
        then fetches them, or says what is wrong)."""
        action = task.action
        if not task.shared_blobs or action.WhichOneof("kind") != "push":
            return None
        namespace = action.push.namespace
        arrays: dict[str, Any] = {}
        for name in namespace:
            value = namespace[name]
            if value.WhichOneof("kind") != "array_value":
                return None
            array = value.array_value
            if array.data.WhichOneof("location") != "blob":
                return None
            try:
                dtype = wire.array_dtype(array.dtype, name)
                arrays[name] = sharedmem.map_array(
                    task.shared_blobs, array.data.blob, dtype, tuple(array.shape)
                )
            except (sharedmem.SharedBlobUnusable, wire.DecodingError):
                return None
        mine = self.namespace
        replaced = [mine[name] for name in arrays if name in mine]
        mine.update(arrays)
        return replaced

    def _execute(self, action: wire.pb.ExecuteAction, outcome: Outcome) -> None:
        count = self.execution_count + (0 if action.silent else 1)
        filename = f"<px-cell-{count}>"
        code = action.code
        if self._shell is None and ("IPython" in sys.modules or mentions_ipython(code)):
            self.ipython()
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        try:
            tree = ast.parse(code, filename)
        except SyntaxError as exc:
            tree = self._parse_ipython_syntax(code, filename, exc.with_traceback(None))
        last: ast.expr | None = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = tree.body.pop().value  # type: ignore[attr-defined]
        if not action.silent:
            self.execution_count = count
        outcome.execution_count = self.execution_count
        try:
            exec(compile(tree, filename, "exec"), self.namespace)
            if last is not None:
                value = eval(compile(ast.Expression(last), filename, "eval"), self.namespace)
                if value is not None and not action.silent:
                    self.namespace["_"] = value
                    outcome.execute_result = self._format(value)
        finally:
            if self._shell is not None:
                self._shell.after_execute()

    def _parse_ipython_syntax(self, code: str, filename: str, error: SyntaxError) -> ast.Module:
        """A cell that is not Python may be IPython (%time, !ls, obj?); else the SyntaxError stands."""
        try:
            python = self.ipython().transform(code)
            tree = ast.parse(python, filename)
        except SyntaxError:
            raise error from None
        linecache.cache[filename] = (len(python), None, python.splitlines(True), filename)
        return tree

    def _format(self, value: Any) -> dict[str, str]:
        if self._shell is not None:
            bundle = self._shell.format(value)
            if "text/plain" in bundle:
                return bundle
        return format_result(value)

    def _apply(self, action: wire.pb.ApplyAction, blobs: wire.BlobMap) -> Any:
        references = reference.loaded_count
        # A function from the client's __main__ is unpickled once and kept, by its pickle:
        # `apply` to many engines, or `map`, sends the same one again and again, and unpickling
        # it (with cloudpickle) costs more than the rest of a small task (see `_unchanging`).
        pickled = action.function.pickled_value  # (empty for a function sent otherwise)
        key = pickled.data.inline if not pickled.buffers else b""
        kept = self._functions.get(key) if key else None
        if kept is not None:
            self._functions.move_to_end(key)
            func = self._interactive(kept)
        else:
            func = self._function(action.function, blobs, key)
        if self._shell is None and "IPython" in sys.modules:
            self.ipython()  # so that display() in the function reaches the client
        args, kwargs = [], {}  # (no comprehension without arguments: each is a call of its own)
        if action.args:
            args = [wire.decode(v, blobs, f"apply.args[{i}]") for i, v in enumerate(action.args)]
        if action.kwargs:
            kwargs = {k: wire.decode(v, blobs, f"apply.kwargs[{k!r}]") for k, v in action.kwargs.items()}
        if reference.loaded_count != references:
            args = reference.resolve(args, self._lookup)
            kwargs = reference.resolve(kwargs, self._lookup)
        return func(*args, **kwargs)

    def _function(self, value: wire.pb.Value, blobs: wire.BlobMap, key: bytes) -> Any:
        """An apply's function, decoded and made ready to call (kept by its pickle `key` when
        no call can change it)."""
        func = wire.decode(value, blobs, "apply.function")
        if key and _unchanging(func):
            self._functions[key] = func
            if len(self._functions) > FUNCTION_CACHE:
                self._functions.popitem(last=False)
        if isinstance(func, str | reference.Reference):
            func = self._lookup(func if isinstance(func, str) else func.name)
        if isinstance(func, Dependent):
            func.check(self.namespace, self._bind)  # @require / @depend: may raise UnmetDependency
            func = func.f
        func = self._bind(func)
        if not callable(func):
            raise TypeError(f"apply.function: {type(func).__name__} object is not callable")
        return func

    def _bind(self, value: Any) -> Any:
        """A function defined in the client's __main__ (or `@interactive`), rebound to the
        engine's namespace; anything else as it is."""
        if isinstance(value, types.FunctionType) and value.__module__ == "__main__":
            return self._interactive(value)
        return value

    def _interactive(self, func: types.FunctionType) -> types.FunctionType:
        """Rebind a function defined in the client's __main__ to the engine's namespace.

        As in ipyparallel, such functions see (and `global` statements change) the engine's
        variables; globals the client captured (modules, helpers) fill in names the engine lacks.
        """
        for name, value in func.__globals__.items():
            if name not in self.namespace and not name.startswith("__"):
                self.namespace[name] = value
        rebound = types.FunctionType(
            func.__code__, self.namespace, func.__name__, func.__defaults__, func.__closure__
        )
        rebound.__kwdefaults__ = func.__kwdefaults__
        rebound.__dict__.update(func.__dict__)
        return rebound

    def _lookup(self, name: str) -> Any:
        head, *rest = name.split(".")
        if head in self.namespace:
            obj = self.namespace[head]
        elif hasattr(builtins, head):
            obj = getattr(builtins, head)
        else:
            raise NameError(f"name {head!r} is not defined")
        for attr in rest:
            obj = getattr(obj, attr)
        return obj


def _unchanging(func: Any) -> bool:
    """Whether no call of `func` (once rebound to an engine's namespace) can change it, so that
    one unpickled copy serves every call."""
    if not isinstance(func, types.FunctionType) or func.__module__ != "__main__":
        return False
    if func.__closure__ or func.__dict__:
        return False
    defaults = (*(func.__defaults__ or ()), *(func.__kwdefaults__ or {}).values())
    return all(_immutable(d) for d in defaults)


def _immutable(value: Any) -> bool:
    if isinstance(value, tuple | frozenset):
        return all(_immutable(v) for v in value)
    return isinstance(value, _IMMUTABLE)


def format_result(value: Any) -> dict[str, str]:
    """A display bundle for an Out[] value: text/plain always, rich formats when the object has them."""
    data = {"text/plain": _plain(value)}
    for method, mime in (
        ("_repr_html_", "text/html"),
        ("_repr_markdown_", "text/markdown"),
        ("_repr_latex_", "text/latex"),
        ("_repr_svg_", "image/svg+xml"),
    ):
        rich = getattr(value, method, None)
        if callable(rich) and not isinstance(value, type):
            try:
                out = rich()
            except Exception:  # noqa: BLE001 - a broken rich repr falls back to text/plain
                continue
            if isinstance(out, str):
                data[mime] = out
    return data


def _plain(value: Any) -> str:
    try:
        if "IPython" in sys.modules:
            from IPython.lib.pretty import pretty

            return str(pretty(value))
        return repr(value)
    except Exception as exc:  # noqa: BLE001 - a broken repr must not fail the task
        return f"<{type(value).__name__} (repr failed: {exc!r})>"
