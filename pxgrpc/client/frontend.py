"""The one hook from the core to the IPython front end (`pxgrpc.ipython`, a leaf).

Nothing else in the core imports the front end: a new Client registers the px magics through
`client_created`, `view.activate()` goes through `activate`, and AsyncResult's progress bar and
display through `progress_bar` and `display_outputs`. The front end is imported on first use, so
engines and plain scripts never load it.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pxgrpc.client.asyncresult import AsyncResult
    from pxgrpc.client.client import Client
    from pxgrpc.client.view import DirectView


def _front_end() -> ModuleType:
    return importlib.import_module("pxgrpc.ipython")


def client_created(client: Client) -> None:
    """Inside IPython, make %px and friends available, as ipyparallel does."""
    if "IPython" not in sys.modules:
        return  # not inside IPython, and importing it would cost ~0.2 s
    try:
        from pxgrpc.ipython.registration import register_for_client
    except ImportError:
        return  # (an IPython too old or broken for the magics: the client works without them)
    register_for_client(client)


def activate(view: DirectView, suffix: str = "") -> None:
    """Make %px (or %px{suffix}) run on `view`."""
    _front_end().activate(view, suffix)


def publish_display_data(data: dict[str, Any], metadata: dict[str, Any]) -> None:
    """Show a display bundle in IPython (its text/plain printed elsewhere)."""
    _front_end().publish_display_data(data, metadata)


def progress_bar(total: int, desc: str = "", widget: bool | None = None) -> Any:
    """A progress bar counting tasks (tqdm; a widget in Jupyter)."""
    return _front_end().progress_bar(total, desc, widget)


def display_outputs(
    ar: AsyncResult, groupby: str = "type", result_only: bool = False, headers: bool = True
) -> None:
    """Show `ar`'s output the way %%px does (without `[stdout:N]` headers if not `headers`)."""
    _front_end().display_outputs(ar, groupby, result_only, headers)
