"""Functions that run on engines when called: `view.remote()` and `view.parallel()` make them.

>>> @dv.remote(block=True)
... def getpid():
...     import os
...     return os.getpid()
>>> getpid()          # one pid per engine of the view
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pxgrpc.client.view import View


class RemoteFunction:
    """A function that runs on a view's engines when called (made by `view.remote()`)."""

    def __init__(self, view: View, f: Callable[..., Any], block: bool | None = None) -> None:
        self.view = view
        self.func = f
        self.block = block
        functools.update_wrapper(self, f)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        ar = self.view.apply_async(self.func, *args, **kwargs)
        block = self.view.block if self.block is None else self.block
        return ar.get() if block else ar


class ParallelFunction(RemoteFunction):
    """A function mapped element-wise over its arguments across engines (made by `view.parallel()`)."""

    def __call__(self, *sequences: Any, **kwargs: Any) -> Any:
        block = self.view.block if self.block is None else self.block
        return self.view.map(self.func, *sequences, block=block)

    def map(self, *sequences: Any) -> Any:
        return self(*sequences)
