"""The errors, where ipyparallel code looks for them: `from pxgrpc import error`, `ipp.error.RemoteError`.

A thin module: every class lives in `pxgrpc.client.errors` (see its docstring for the
hierarchy). `KernelError`, `IPythonError` and `NoEnginesRegistered` are ipyparallel's names for
`PxError` and `NoEnginesError`.

>>> from pxgrpc import error
>>> try:
...     rc[:].apply_sync(lambda: 1 / 0)
... except error.CompositeError as e:
...     e.raise_exception()
"""

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

IPythonError = PxError
KernelError = PxError
NoEnginesRegistered = NoEnginesError

__all__ = [
    "AlreadyDisplayedError",
    "AuthenticationError",
    "CompositeError",
    "DependencyTimeout",
    "EngineError",
    "IPythonError",
    "ImpossibleDependency",
    "InvalidDependency",
    "KernelError",
    "NoEnginesError",
    "NoEnginesRegistered",
    "PxConnectionError",
    "PxError",
    "RemoteError",
    "TLSError",
    "TaskAborted",
    "TimeoutError",
    "UnmetDependency",
]
