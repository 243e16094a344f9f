"""The Python client: Client, views, AsyncResult and errors."""

from pxgrpc.client.asyncresult import AsyncMapResult, AsyncResult
from pxgrpc.client.client import Client, ViewExecutor
from pxgrpc.client.errors import (
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
from pxgrpc.client.view import DirectView, LoadBalancedView

__all__ = [
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
