"""The IPython and Jupyter front end: the px magics, `[stdout:N]`/`Out[N:n]` display and progress
bars. A leaf: the core reaches it only through `pxgrpc.client.frontend`, and only when used.

`%load_ext pxgrpc` (or `%load_ext pxgrpc.ipython`) registers the magics. The functions here import
their module on first call, so that a progress bar outside IPython does not load IPython's magics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pxgrpc.client.asyncresult import AsyncResult
    from pxgrpc.client.client import Client
    from pxgrpc.client.view import DirectView


def register_for_client(client: Client) -> None:
    """Inside IPython, let %px run on `client`'s engines (called for every new Client)."""
    from pxgrpc.ipython.registration import register_for_client as register

    register(client)


def activate(view: DirectView, suffix: str = "") -> None:
    """Make `%px{suffix}`, `%%px{suffix}`, ... run on `view`."""
    from pxgrpc.ipython.registration import activate as activate_view

    activate_view(view, suffix)


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext pxgrpc`: the px magics, connected to the local cluster when first used."""
    from pxgrpc.ipython.registration import load_ipython_extension as load

    load(ipython)


def display_outputs(
    ar: AsyncResult, groupby: str = "type", result_only: bool = False, headers: bool = True
) -> None:
    """Show what `ar`'s tasks printed, displayed and returned (see `display.display_outputs`)."""
    from pxgrpc.ipython.display import display_outputs as show

    show(ar, groupby, result_only, headers)


def publish_display_data(data: dict[str, Any], metadata: dict[str, Any]) -> None:
    """Show a display bundle in IPython (its text/plain printed elsewhere)."""
    from pxgrpc.ipython.display import OutputPrinter

    OutputPrinter().publish(data, metadata)


def progress_bar(total: int, desc: str = "", widget: bool | None = None) -> Any:
    """A tqdm bar counting tasks (a widget in Jupyter); see `progress.progress_bar`."""
    from pxgrpc.ipython.progress import progress_bar as bar

    return bar(total, desc, widget)
