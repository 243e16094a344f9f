"""Progress bars for long waits: tqdm, as a widget in Jupyter and as text elsewhere."""

from __future__ import annotations

import importlib.util
from typing import Any


def in_notebook() -> bool:
    """Whether we run inside a Jupyter kernel (where a widget bar is nicer than text)."""
    try:
        from IPython.core.getipython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def progress_bar(total: int, desc: str = "", widget: bool | None = None) -> Any:
    """A tqdm bar counting tasks; `widget` forces (or refuses) the notebook widget."""
    use_widget = in_notebook() if widget is None else widget
    # Without ipywidgets tqdm.notebook fails half-way (and complains again when collected).
    if use_widget and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm as notebook_tqdm

        return notebook_tqdm(total=total, desc=desc, unit="tasks")
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="tasks")
