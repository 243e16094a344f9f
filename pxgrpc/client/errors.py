"""The errors pxgrpc raises: one small hierarchy to catch.

PxError
├── RemoteError          an exception raised by user code on an engine
│   ├── CompositeError   several engines raised
│   ├── AlreadyDisplayedError  (%%px --stream) errors already shown, summed up in one line
│   ├── EngineError      the engine died or left before finishing the task (ename "EngineError")
│   └── UnmetDependency  a task's dependencies are not met (see pxgrpc.dependency)
│       └── ImpossibleDependency  ... and never can be
│           ├── DependencyTimeout  ... within the task's `timeout`
│           └── InvalidDependency  ... because a task depended on is unknown to this client
├── TaskAborted          the task was aborted before it started
├── TimeoutError         (also the builtin TimeoutError) a wait ran out
└── PxConnectionError    (also the builtin ConnectionError) the controller is unreachable or refused us
    ├── AuthenticationError  the controller refused our token or client certificate
    └── TLSError             TLS failed: untrusted, expired or misnamed certificate, or a TLS mismatch
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import Any


class PxError(Exception):
    """Base class of every pxgrpc error."""


class RemoteError(PxError):
    """An exception raised on an engine, with the remote traceback.

    `ename` is the remote exception's class name, `evalue` its message, `traceback` the formatted
    remote traceback, `engine_id` where it happened.
    """

    def __init__(self, ename: str, evalue: str, traceback: str = "", engine_id: int | None = None) -> None:
        super().__init__(ename, evalue)
        self.ename = ename
        self.evalue = evalue
        self.traceback = traceback
        self.engine_id = engine_id

    def __str__(self) -> str:
        if self.engine_id is None:
            return f"{self.ename}: {self.evalue}"
        return f"[{self.engine_id}:{self.ename}] {self.evalue}"

    def render_traceback(self) -> list[str]:
        """The remote traceback as lines (IPython shows this instead of the local one)."""
        header = f"[{self.engine_id}:{self.ename}]" if self.engine_id is not None else f"[{self.ename}]"
        body = self.traceback.rstrip("\n") or f"{self.ename}: {self.evalue}"
        return [header, *body.splitlines()]

    def _render_traceback_(self) -> list[str]:
        return self.render_traceback()

    def print_traceback(self) -> None:
        print("\n".join(self.render_traceback()))


class CompositeError(RemoteError):
    """Errors raised on several engines by one call; `elist` holds each engine's RemoteError.

    `str()` shows the first `tb_limit` errors (as ipyparallel's does), its rendered traceback
    their full tracebacks and one line for each other error (ipyparallel leaves those out);
    `render_traceback(excid)` and `raise_exception(excid)` reach any one of them.
    """

    #: How many of the engines' errors `str()` and `render_traceback()` show.
    tb_limit = 4

    def __init__(self, message: str, elist: Sequence[PxError]) -> None:
        self.elist = list(elist)
        first = self.elist[0]
        ename = getattr(first, "ename", type(first).__name__)
        super().__init__(ename, message, getattr(first, "traceback", ""), getattr(first, "engine_id", None))
        self.message = message

    def _more(self) -> list[str]:
        hidden = len(self.elist) - self.tb_limit
        return [f"... {hidden} more exceptions ..."] if hidden > 0 else []

    def __str__(self) -> str:
        lines = [self.message]
        for err in self.elist[: self.tb_limit]:
            lines.append(str(err) if isinstance(err, RemoteError) else f"{type(err).__name__}: {err}")
        return "\n".join(lines + self._more())

    def __repr__(self) -> str:
        return f"CompositeError({len(self.elist)})"

    def render_traceback(self, excid: int | None = None) -> list[str]:
        """The full tracebacks of the first `tb_limit` engines' errors and one line for each of
        the others; or only the `excid`-th error's traceback."""
        if excid is not None and not -len(self.elist) <= excid < len(self.elist):
            raise IndexError(f"an exception with index {excid} does not exist")
        chosen = self.elist[: self.tb_limit] if excid is None else [self.elist[excid]]
        lines: list[str] = [self.message]
        for err in chosen:
            if isinstance(err, RemoteError):
                lines.extend(err.render_traceback())
            else:
                lines.append(f"{type(err).__name__}: {err}")
            lines.append("")
        if excid is None:
            lines.extend(str(err) for err in self.elist[self.tb_limit :])
        return lines

    def print_traceback(self, excid: int | None = None) -> None:
        print("\n".join(self.render_traceback(excid)))

    def raise_exception(self, excid: int = 0) -> None:
        """Re-raise one engine's error."""
        if not -len(self.elist) <= excid < len(self.elist):
            raise IndexError(f"an exception with index {excid} does not exist")
        raise self.elist[excid]


class EngineError(RemoteError):
    """The engine died or disconnected before it finished the task.

    A RemoteError with `ename == "EngineError"`, so code written for ipyparallel that catches
    RemoteError catches it; its message says what happened to the engine.
    """

    def __init__(self, message: str, engine_id: int | None = None) -> None:
        super().__init__("EngineError", message, f"EngineError: {message}", engine_id)

    def __str__(self) -> str:
        return self.evalue

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.evalue, self.engine_id))


class UnmetDependency(RemoteError):
    """A load-balanced task's dependencies are not met (`@require`, `@depend`, `after`, `follow`).

    Raised with its own class name as `ename`, like ipyparallel's, so both
    `except pxgrpc.error.ImpossibleDependency` and `err.ename == "ImpossibleDependency"` work.
    """

    def __init__(self, evalue: str = "", engine_id: int | None = None) -> None:
        name = type(self).__name__
        super().__init__(name, evalue, f"{name}: {evalue}", engine_id)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.evalue, self.engine_id))


class ImpossibleDependency(UnmetDependency):
    """The task's dependencies can never be met: a task it depends on failed (or succeeded,
    with `success=False`), its `follow` engines are gone or differ, or no engine meets its
    `@require`/`@depend` condition."""


class DependencyTimeout(ImpossibleDependency):
    """The task's dependencies were not met within its `timeout`."""


class InvalidDependency(ImpossibleDependency):
    """The task depends on a task id this client never submitted (or a malformed dependency)."""


class TaskAborted(PxError):
    """The task was aborted before it started."""


class AlreadyDisplayedError(RemoteError):
    """Errors already shown: `%%px --stream` printed each engine's traceback as it came, and
    raises this (a one-line summary) instead of showing them again. `original_error` is the
    CompositeError, `elist` its errors."""

    def __init__(self, original_error: RemoteError) -> None:
        self.original_error = original_error
        self.elist = list(getattr(original_error, "elist", [original_error]))
        self.n = len(self.elist)
        super().__init__(original_error.ename, str(self), original_error.traceback, original_error.engine_id)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}({self.n} errors)>"

    def __str__(self) -> str:
        return f"{self.n} errors"

    def render_traceback(self) -> list[str]:
        return [str(self)]


class TimeoutError(PxError, builtins.TimeoutError):
    """A wait (get, wait_for_engines, ...) ran out of time; the work itself goes on."""


class PxConnectionError(PxError, builtins.ConnectionError):
    """The controller cannot be reached, or it went away. `code` is the gRPC status name;
    `cause` says what went wrong when connecting (see `pxgrpc.diagnose.FailureCause`), e.g.
    ``"unreachable"`` or ``"wrong-token"``, and is empty when not known."""

    def __init__(self, message: str, code: str = "", cause: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.cause = cause


class AuthenticationError(PxConnectionError):
    """The controller refused our credentials (token or client certificate)."""


class TLSError(PxConnectionError):
    """The TLS connection could not be set up: the controller's certificate is untrusted, expired
    or for another name, or only one side speaks TLS. The message says which, and the fix."""


class NoEnginesError(PxError, ValueError, IndexError):
    """A view was asked to run on engines that do not exist (`rc[99]`: also an IndexError, as
    in ipyparallel)."""
