"""Registering the px magics with an IPython shell: for each new Client, for `view.activate()`,
and for `%load_ext pxgrpc`."""

from __future__ import annotations

import sys
import warnings
from typing import TYPE_CHECKING, Any

from pxgrpc.ipython.magics import ParallelMagics

if TYPE_CHECKING:
    from pxgrpc.client.client import Client
    from pxgrpc.client.view import DirectView


def _shell() -> Any:
    if "IPython" not in sys.modules:
        return None
    from IPython.core.getipython import get_ipython

    return get_ipython()


def _registered(shell: Any, suffix: str) -> ParallelMagics | None:
    """Our magics registered as %px{suffix}, if any."""
    func = shell.magics_manager.magics["line"].get("px" + suffix)
    owner = getattr(func, "__self__", None)
    return owner if isinstance(owner, ParallelMagics) else None


def _register(shell: Any, view: DirectView | None, suffix: str, automatic: bool, fresh: bool = False) -> None:
    existing = _registered(shell, suffix)
    if existing is not None:
        if view is not None:
            existing.use_view(view, automatic)
        if fresh:
            existing.reset_settings()
        return
    shell.magics_manager.register(ParallelMagics(shell, view, suffix, automatic))


def activate(view: DirectView, suffix: str = "") -> None:
    """Make `%px{suffix}`, `%%px{suffix}`, `%autopx{suffix}`, ... run on `view`."""
    shell = _shell()
    if shell is None:
        warnings.warn("the pxgrpc magics (%px, ...) only work inside IPython", stacklevel=3)
        return
    _register(shell, view, suffix, automatic=False, fresh=True)  # (default settings, as ipyparallel)


def register_for_client(client: Client) -> None:
    """Inside IPython, let %px run on `client`'s engines (called by every new Client).

    The newest client takes over the magics unless a view was chosen with `view.activate()`
    (and its client is still open), or `%px` belongs to another package (e.g. ipyparallel).
    """
    shell = _shell()
    if shell is None:
        return
    existing = _registered(shell, "")
    if existing is None and "px" in shell.magics_manager.magics["line"]:
        return
    if existing is None or existing.automatic or existing.client_closed():
        view = client.direct_view("all")
        view.block = True
        _register(shell, view, "", automatic=True)


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext pxgrpc`: the px magics, connected to the local cluster when first used."""
    _register(ipython, None, "", automatic=True)
