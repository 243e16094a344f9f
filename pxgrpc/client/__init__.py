"""The Python client: Client, views, AsyncResult and errors."""

from pxgrpc.client.asyncresult import AsyncResult
from pxgrpc.client.balanced import LoadBalancedView
from pxgrpc.client.client import Client
from pxgrpc.client.errors import (
    AlreadyDisplayedError,
    AuthenticationError,
    CompositeError,
    DependencyTimeout,
    EngineError,
    ImpossibleDependency,
    InvalidDependency,
    NoEnginesError,
    PxConnectionError,
    PxError,
    RemoteError,
    TaskAborted,
    TimeoutError,
    TLSError,
    UnmetDependency,
)
from pxgrpc.client.executor import ViewExecutor
from pxgrpc.client.mapresult import AsyncMapResult
from pxgrpc.client.view import DirectView

__all__ = [
    "AlreadyDisplayedError",
    "AsyncMapResult",
    "AsyncResult",
    "AuthenticationError",
    "Client",
    "CompositeError",
    "DependencyTimeout",
    "DirectView",
    "EngineError",
    "ImpossibleDependency",
    "InvalidDependency",
    "LoadBalancedView",
    "NoEnginesError",
    "PxConnectionError",
    "PxError",
    "RemoteError",
    "TLSError",
    "TaskAborted",
    "TimeoutError",
    "UnmetDependency",
    "ViewExecutor",
]
