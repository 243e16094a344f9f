"""pxgrpc: interactive parallel Python over gRPC.

An ipyparallel-compatible client (`import pxgrpc as ipp`), a controller and engines that talk
gRPC with a typed, documented protocol (protos/pxgrpc/v1), TLS, and speed.

>>> import pxgrpc as ipp
>>> with ipp.Cluster(n=4) as rc:
...     rc[:].apply_sync(lambda: 42)
[42, 42, 42, 42]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pxgrpc import _grpc_env  # noqa: F401  (must run before grpc loads)

if TYPE_CHECKING:
    from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION

    from pxgrpc.client import (
        AsyncMapResult,
        AsyncResult,
        AuthenticationError,
        Client,
        CompositeError,
        DirectView,
        EngineError,
        LoadBalancedView,
        NoEnginesError,
        PxConnectionError,
        PxError,
        RemoteError,
        TaskAborted,
        TimeoutError,
        TLSError,
        ViewExecutor,
    )
    from pxgrpc.client.errors import (
        DependencyTimeout,
        ImpossibleDependency,
        InvalidDependency,
        UnmetDependency,
    )
    from pxgrpc.cluster import Cluster
    from pxgrpc.dependency import Dependency, depend, require
    from pxgrpc.identity import engine_id
    from pxgrpc.reference import Reference
    from pxgrpc.versions import VersionMismatchWarning
    from pxgrpc.wire import OpaqueObject

# The public names and the module each lives in, imported on first use (as CPython's
# concurrent.futures does): an engine imports `pxgrpc.engine` without loading the client.
_LAZY = {
    **dict.fromkeys(
        [
            "AsyncMapResult",
            "AsyncResult",
            "AuthenticationError",
            "Client",
            "CompositeError",
            "DirectView",
            "EngineError",
            "LoadBalancedView",
            "NoEnginesError",
            "PxConnectionError",
            "PxError",
            "RemoteError",
            "TLSError",
            "TaskAborted",
            "TimeoutError",
            "ViewExecutor",
        ],
        "pxgrpc.client",
    ),
    **dict.fromkeys(
        ["DependencyTimeout", "ImpossibleDependency", "InvalidDependency", "UnmetDependency"],
        "pxgrpc.client.errors",
    ),
    **dict.fromkeys(["Dependency", "depend", "require"], "pxgrpc.dependency"),
    "Cluster": "pxgrpc.cluster",
    "engine_id": "pxgrpc.identity",
    "OpaqueObject": "pxgrpc.wire",
    "Reference": "pxgrpc.reference",
    # For `ar.wait(return_when=...)`, as ipyparallel exports them.
    **dict.fromkeys(["ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION"], "concurrent.futures"),
    "VersionMismatchWarning": "pxgrpc.versions",
}
#: Submodules ipyparallel code reaches as attributes (`ipp.error.RemoteError`).
_SUBMODULES = {"error", "util"}


def __getattr__(name: str) -> Any:
    import importlib

    if name in _SUBMODULES:
        return importlib.import_module(f"pxgrpc.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pxgrpc' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | _SUBMODULES)


__version__ = "0.1.0"


def interactive(f):  # type: ignore[no-untyped-def]
    """Make a function run in the engine's namespace, seeing (and `global`-assigning) its variables.

    Functions defined in `__main__` (scripts, notebooks) already behave this way; use this for
    functions defined in modules, as with ipyparallel's `@interactive`.
    """
    f.__module__ = "__main__"
    return f


def load_ipython_extension(ipython: object) -> None:
    """`%load_ext pxgrpc`: register %px, %%px, %autopx, %pxresult and %pxconfig."""
    from pxgrpc.ipython import load_ipython_extension as load

    load(ipython)


__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "AsyncMapResult",
    "AsyncResult",
    "AuthenticationError",
    "Client",
    "Cluster",
    "CompositeError",
    "Dependency",
    "DependencyTimeout",
    "DirectView",
    "EngineError",
    "ImpossibleDependency",
    "InvalidDependency",
    "LoadBalancedView",
    "NoEnginesError",
    "OpaqueObject",
    "PxConnectionError",
    "PxError",
    "Reference",
    "RemoteError",
    "TLSError",
    "TaskAborted",
    "TimeoutError",
    "UnmetDependency",
    "VersionMismatchWarning",
    "ViewExecutor",
    "__version__",
    "depend",
    "engine_id",
    "interactive",
    "require",
]
