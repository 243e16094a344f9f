"""Functions clients run on engines by reference (pickled by name, imported on the engine).

They live outside `pxgrpc.client` so that running one does not load the client on an engine.
"""

from __future__ import annotations

import sys


def clear_namespace() -> None:
    """Delete the user's variables from the engine's namespace (`rc.clear()`, `view.clear()`).

    Names IPython keeps for itself in the namespace (when the engine uses IPython) stay.
    """
    namespace = sys.modules["__main__"].__dict__
    ipython = sys.modules.get("IPython")  # (only when the task's code already uses IPython)
    shell = ipython.get_ipython() if ipython is not None else None
    hidden = set(shell.user_ns_hidden) if shell is not None else set()
    for name in list(namespace):
        if not (name.startswith("__") and name.endswith("__")) and name not in hidden:
            del namespace[name]
