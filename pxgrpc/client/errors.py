"""The errors pxgrpc raises: one small hierarchy to catch.

PxError
├── RemoteError          an exception raised by user code on an engine
│   ├── CompositeError   several engines raised
│   └── AlreadyDisplayedError  (%%px --stream) errors already shown, summed up in one line
├── EngineError          the engine died or left before finishing the task
├── TaskAborted          the task was aborted before it started
├── TimeoutError         (also the builtin TimeoutError) a wait ran out
└── PxConnectionError    (also the builtin ConnectionError) the controller is unreachable or refused us
    ├── AuthenticationError  the controller refused our token or client certificate
    └── TLSError             TLS failed: untrusted, expired or misnamed certificate, or a TLS mismatch
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence


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
    """Errors raised on several engines by one call; `elist` holds each engine's RemoteError."""

    def __init__(self, message: str, elist: Sequence[PxError]) -> None:
        self.elist = list(elist)
        first = self.elist[0]
        ename = getattr(first, "ename", type(first).__name__)
        super().__init__(ename, message, getattr(first, "traceback", ""), getattr(first, "engine_id", None))
        self.message = message

    def __str__(self) -> str:
        lines = [self.message]
        for err in self.elist:
            lines.append(str(err) if isinstance(err, RemoteError) else f"{type(err).__name__}: {err}")
        return "\n".join(lines)

    def render_traceback(self, excid: int | None = None) -> list[str]:
        """Every engine's traceback, or only the `excid`-th one."""
        chosen = self.elist if excid is None else [self.elist[excid]]
        lines: list[str] = [self.message]
        for err in chosen:
            if isinstance(err, RemoteError):
                lines.extend(err.render_traceback())
            else:
                lines.append(f"{type(err).__name__}: {err}")
            lines.append("")
        return lines

    def raise_exception(self, excid: int = 0) -> None:
        """Re-raise one engine's error."""
        raise self.elist[excid]


class EngineError(PxError):
    """The engine died or disconnected before it finished the task."""

    def __init__(self, message: str, engine_id: int | None = None) -> None:
        super().__init__(message)
        self.engine_id = engine_id
        self.ename = "EngineError"
        self.evalue = message
        self.traceback = message


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
