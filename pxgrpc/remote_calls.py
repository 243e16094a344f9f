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
    hidden: set[str] = set()
    if "IPython" in sys.modules:
        from IPython.core.getipython import get_ipython

        shell = get_ipython()  # type: ignore[no-untyped-call]
        if shell is not None:
            hidden = set(shell.user_ns_hidden)
    for name in list(namespace):
        if not (name.startswith("__") and name.endswith("__")) and name not in hidden:
            del namespace[name]
