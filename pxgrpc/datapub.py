"""Publishing values from a running task to its client (ipyparallel's `datapub`).

Inside a task on an engine::

    from pxgrpc.datapub import publish_data
    for step in range(100):
        ...
        publish_data({"step": step, "loss": loss})

The client sees the latest published values while the task still runs, as `ar.data` (one dict
per task; a later value for a name replaces the earlier one). Values travel inline on the
session stream: keep them small (a progress counter, a few numbers), not data sets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: Set by the engine process: sends one dict for the running task. None outside an engine.
_publisher: Callable[[dict[str, Any]], None] | None = None


def set_publisher(publisher: Callable[[dict[str, Any]], None] | None) -> None:
    """(Engines only.) Route `publish_data` to this engine's connection."""
    global _publisher
    _publisher = publisher


def publish_data(data: dict[str, Any]) -> None:
    """Publish `data` (names to values) for the running task; the client sees it as `ar.data`."""
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise TypeError(f"publish_data takes a dict of names (str) to values, not {type(data).__name__}")
    if _publisher is None:
        raise RuntimeError("publish_data works only in a task running on a pxgrpc engine")
    _publisher(data)
