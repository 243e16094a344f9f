"""IPython on an engine, set up only when the user's code needs it.

Two things need an IPython shell on the engine: `display()` (rich output forwarded to the
client as DisplayEvents) and IPython syntax in `%%px` cells (`%time`, `!ls`, `obj?`). Importing
IPython costs ~0.2 s, so plain Python tasks never pay for it: the kernel creates the shell on
first need (code that mentions IPython or display, code that only parses as IPython syntax, or
IPython already imported by the user).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import types
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_SHELL = os.environ.get("SHELL") or "/bin/sh"

#: Receives one display bundle: mime type -> text (binary types base64), and JSON metadata.
DisplaySink = Callable[[dict[str, str], str], None]

#: Words whose presence in a cell suggests it will call display() or get_ipython().
_HINTS = ("IPython", "display", "get_ipython")


def mentions_ipython(code: str) -> bool:
    """Whether `code` may need the IPython shell (cheap substring test, false positives are fine)."""
    return any(hint in code for hint in _HINTS)


def encode_bundle(data: dict[str, Any]) -> dict[str, str]:
    """A display bundle as strings: bytes become base64 (as in Jupyter), JSON values JSON text."""
    encoded: dict[str, str] = {}
    for mime, value in data.items():
        if isinstance(value, bytes):
            encoded[mime] = base64.b64encode(value).decode("ascii")
        elif isinstance(value, str):
            encoded[mime] = value
        else:
            encoded[mime] = json.dumps(value, default=repr)
    return encoded


class EngineShell:
    """An IPython InteractiveShell sharing the engine's namespace, publishing display() upward."""

    def __init__(self, module: types.ModuleType, sink: DisplaySink | None) -> None:
        from IPython.core.displaypub import DisplayPublisher
        from IPython.core.interactiveshell import InteractiveShell
        from traitlets.config import Config

        config = Config()
        config.HistoryManager.enabled = False
        self.shell = InteractiveShell.instance(config=config, user_module=module, user_ns=module.__dict__)
        outer = self

        class ForwardingPublisher(DisplayPublisher):
            """Sends display() output to the client instead of printing it."""

            def publish(
                self,
                data: dict[str, Any],
                metadata: dict[str, Any] | None = None,
                source: Any = None,
                *,
                transient: Any = None,
                update: bool = False,
                **kwargs: Any,
            ) -> None:
                outer.publish(data, metadata)

            def clear_output(self, wait: bool = False) -> None:
                pass  # the client keeps every output of a task

        self.shell.display_pub = ForwardingPublisher(shell=self.shell)
        # `!cmd` and `x = !cmd` through pipes: IPython's pty reader can drop the output of
        # commands that exit quickly, and pipes stream into the task's captured stdout.
        self.shell.system = self.shell.system_piped = self.system  # type: ignore[method-assign]
        self.shell.getoutput = self.getoutput  # type: ignore[method-assign]
        self.shell.enable_gui = self.enable_gui  # type: ignore[method-assign]
        self.sink = sink
        log.debug("IPython shell created on the engine")

    def publish(self, data: dict[str, Any], metadata: dict[str, Any] | None) -> None:
        """Forward one display bundle (or print its text when nobody listens)."""
        bundle = encode_bundle(data)
        if self.sink is None:
            print(bundle.get("text/plain", ""))
            return
        self.sink(bundle, json.dumps(metadata or {}, default=repr))

    def enable_gui(self, gui: str | None = None) -> None:
        """`%matplotlib inline` needs no event loop; engines have no screen for other GUIs."""
        if gui not in (None, "inline"):
            from IPython.core.error import UsageError

            raise UsageError(f"engines cannot show {gui} windows; use %matplotlib inline")

    def system(self, cmd: str) -> None:
        """`!cmd`: run `cmd` in a shell, its output streamed to the task's stdout."""
        command = self._command(cmd, depth=1)
        proc = subprocess.Popen(
            command, shell=True, executable=_SHELL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                sys.stdout.write(line.decode(errors="replace"))
        except KeyboardInterrupt:
            proc.kill()
            raise
        finally:
            proc.stdout.close()
            self.shell.user_ns["_exit_code"] = proc.wait()

    def getoutput(self, cmd: str, split: bool = True, depth: int = 0) -> Any:
        """`x = !cmd`: the output of `cmd` as IPython's SList (or LSString)."""
        from IPython.utils.text import LSString, SList

        command = self._command(cmd, depth=depth + 1)
        done = subprocess.run(command, shell=True, executable=_SHELL, capture_output=True, check=False)
        out = (done.stdout + done.stderr).decode(errors="replace")
        return SList(out.splitlines()) if split else LSString(out)

    def _command(self, cmd: str, depth: int) -> str:
        if cmd.rstrip().endswith("&"):
            raise OSError("Background processes not supported.")
        # +1: this frame; IPython expands $names from the caller's frame `depth` levels up.
        return str(self.shell.var_expand(cmd, depth=depth + 1))

    def transform(self, code: str) -> str:
        """IPython syntax (%magic, !cmd, obj?) rewritten as Python calling get_ipython()."""
        return str(self.shell.transform_cell(code))

    def format(self, value: Any) -> dict[str, str]:
        """The display bundle IPython makes for `value` (images, HTML, LaTeX, ...)."""
        formatter = self.shell.display_formatter
        assert formatter is not None
        data, _ = formatter.format(value)
        return encode_bundle(data)

    def after_execute(self) -> None:
        """Run IPython's post-execute hooks (e.g. `%matplotlib inline` shows figures here)."""
        self.shell.events.trigger("post_execute")
