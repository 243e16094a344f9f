"""ExecuteReply: what `execute(...).get()` gives per engine, as in ipyparallel.

>>> ar = dv.execute("import os\\nos.getpid()", silent=False, block=True)
>>> ar.get()
[<ExecuteReply[3]: 4242>, <ExecuteReply[3]: 4243>]
>>> ar.get()[0].execution_count, ar.get()[0].stdout, ar.get()[0].data["text/plain"]
(3, '', '4242')

In IPython a reply shows as the engine's `Out[0:3]: 4242` (with its rich forms, HTML, images...).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def decode_bundle(data: dict[str, str]) -> dict[str, Any]:
    """A display bundle from the wire: JSON mime types parsed back into values."""
    decoded: dict[str, Any] = {}
    for mime, value in data.items():
        if mime == "application/json" or mime.endswith("+json"):
            try:
                decoded[mime] = json.loads(value)
            except ValueError:
                decoded[mime] = value
        else:
            decoded[mime] = value
    return decoded


class ExecuteReply:
    """The outcome of one execute on one engine: its execution count, the task's metadata
    (`stdout`, `stderr`, `engine_id`, `execute_result`, ... also as attributes and items) and the
    rich representations (`data`) of the cell's final expression, if it had one.

    `metadata` may be a function that makes it: it is then made on first use, by the thread
    that reads it, not by the one that delivers the result (a blocking `execute` wakes sooner)."""

    def __init__(
        self, msg_id: str, execution_count: int, metadata: dict[str, Any] | Callable[[], dict[str, Any]]
    ) -> None:
        self.msg_id = msg_id
        self.execution_count = execution_count
        self._metadata = metadata

    @property
    def metadata(self) -> dict[str, Any]:
        """The task's metadata (`ar.metadata` for this engine)."""
        if callable(self._metadata):
            self._metadata = self._metadata()
        return self._metadata

    def __getstate__(self) -> dict[str, Any]:
        return {"msg_id": self.msg_id, "execution_count": self.execution_count, "_metadata": self.metadata}

    @property
    def data(self) -> dict[str, Any]:
        """The final expression's representations, mime type -> content ({} if none)."""
        result = self.metadata.get("execute_result")
        return dict(result.get("data", {})) if result else {}

    def _plaintext(self) -> str:
        text = str(self.data.get("text/plain", ""))
        if not text:
            return ""
        if "\n" in text and not text.startswith("\n"):
            text = "\n" + text
        return f"Out[{self.metadata.get('engine_id')}:{self.execution_count}]: {text}"

    def display(self) -> None:
        """Publish the value's representations in IPython."""
        from pxgrpc.client.frontend import publish_display_data

        publish_display_data(self.data, {"engine": self.metadata.get("engine_id")})

    def _repr_mimebundle_(self, *args: Any, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        data = self.data
        if "text/plain" in data:
            data["text/plain"] = self._plaintext()
        return data, {"engine": self.metadata.get("engine_id")}

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self._plaintext())

    def __getitem__(self, key: str) -> Any:
        return self.metadata[key]

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_") or key not in self.metadata:
            raise AttributeError(key)
        return self.metadata[key]

    def __repr__(self) -> str:
        text = str(self.data.get("text/plain", ""))
        if len(text) > 32:
            text = text[:29] + "..."
        return f"<ExecuteReply[{self.execution_count}]: {text}>"
