"""pxgrpc: interactive parallel Python over gRPC.

An ipyparallel-compatible client (`import pxgrpc as ipp`), a controller and engines that talk
gRPC with a typed, documented protocol (protos/pxgrpc/v1), TLS, and speed.

>>> import pxgrpc as ipp
>>> with ipp.Cluster(n=4) as rc:
...     rc[:].apply_sync(lambda: 42)
[42, 42, 42, 42]
"""

from pxgrpc import _grpc_env  # noqa: F401  (must run before grpc loads)
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
from pxgrpc.cluster import Cluster
from pxgrpc.identity import engine_id
from pxgrpc.wire import OpaqueObject

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
    from pxgrpc.magics import load_ipython_extension as load

    load(ipython)


__all__ = [
    "AsyncMapResult",
    "AsyncResult",
    "AuthenticationError",
    "Client",
    "Cluster",
    "CompositeError",
    "DirectView",
    "EngineError",
    "LoadBalancedView",
    "NoEnginesError",
    "OpaqueObject",
    "PxConnectionError",
    "PxError",
    "RemoteError",
    "TLSError",
    "TaskAborted",
    "TimeoutError",
    "ViewExecutor",
    "__version__",
    "engine_id",
    "interactive",
]
