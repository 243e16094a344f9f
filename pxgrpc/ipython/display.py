"""Showing what engines produced, the way ipyparallel users know it.

    [stdout:0]
    Len 143
    [stderr:2]
    warning: ...
    [output:1]          (display() data from engine 1: HTML, images, ...)
    Out[0:5]: 42        (engine 0's final expression, its execution count 5)

Inside IPython or Jupyter, display data and Out[] values are published as rich output (HTML,
images, ...); elsewhere their text/plain form is printed.
"""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from pxgrpc.client.executereply import decode_bundle

if TYPE_CHECKING:
    from pxgrpc.client.asyncresult import AsyncResult

GROUPINGS = ("type", "engine", "order")

#: After the first output of a burst, wait this long for the other engines' output, so that
#: output produced at the same moment is shown in engine order.
BURST_SECONDS = 0.05


@dataclass
class EngineOutput:
    """What one task of an AsyncResult produced so far."""

    engine_id: int | None
    stdout: str = ""
    stderr: str = ""
    outputs: list[dict[str, Any]] = field(default_factory=list)
    execute_result: dict[str, Any] | None = None


def engine_outputs(ar: AsyncResult) -> list[EngineOutput]:
    """One EngineOutput per task of `ar`, in the order of its tasks (engine order for views)."""
    engine_ids, stdouts, stderrs = ar.engine_id, ar.stdout, ar.stderr
    outputs, results = ar.outputs, ar.execute_result
    if not isinstance(engine_ids, list):  # a single-engine view gives scalars
        return [EngineOutput(engine_ids, stdouts, stderrs, outputs, results)]
    return [EngineOutput(*task) for task in zip(engine_ids, stdouts, stderrs, outputs, results, strict=True)]


def _shell() -> Any:
    if "IPython" not in sys.modules:
        return None
    from IPython.core.getipython import get_ipython

    return get_ipython()


class OutputPrinter:
    """Prints engine output with `[stdout:N]` headers; a header is repeated only when it changes."""

    def __init__(self, headers: bool = True) -> None:
        self._last_header = ""
        self._at_line_start = True
        #: False for a single engine's output: the text alone, as ipyparallel shows it.
        self.headers = headers

    def stream(self, engine_id: int | None, name: str, text: str) -> None:
        """Print stdout/stderr text of one engine under its `[name:engine]` header."""
        if not text:
            return
        file: TextIO = sys.stderr if name == "stderr" else sys.stdout
        header = f"[{name}:{engine_id}] "
        if self.headers and header != self._last_header:
            lead = "" if self._at_line_start else "\n"
            text = f"{lead}{header}\n{text}"
            self._last_header = header
        print(text, end="", file=file)
        file.flush()
        self._at_line_start = text.endswith("\n")

    def publish(self, data: dict[str, Any], metadata: dict[str, Any]) -> None:
        """One display bundle: rich inside IPython, its text/plain printed elsewhere."""
        shell = _shell()
        if shell is None:
            print(data.get("text/plain", ""))
            return
        from IPython.display import publish_display_data

        sys.stdout.flush()
        sys.stderr.flush()
        publish_display_data(data, metadata)

    def _section(self, engine_id: int | None) -> None:
        """The `[output:N]` line that introduces an engine's display output."""
        if not self._at_line_start:
            print()
        self.publish({"text/plain": f"[output:{engine_id}]"}, {})
        self._last_header = ""
        self._at_line_start = True

    def display(self, engine_id: int | None, output: dict[str, Any], header: bool = True) -> None:
        """Show one display() bundle of an engine (rich inside IPython)."""
        if header and self.headers:
            self._section(engine_id)
        metadata = output.get("metadata") or {}
        if isinstance(metadata, str):
            metadata = json.loads(metadata) if metadata else {}
        self.publish(decode_bundle(output.get("data", {})), {**metadata, "engine": engine_id})

    def result(self, engine_id: int | None, execute_result: dict[str, Any]) -> None:
        """Show an engine's Out[engine:count] value."""
        if not self._at_line_start:
            print()
        data = decode_bundle(execute_result.get("data", {}))
        prompt = f"Out[{engine_id}:{execute_result.get('execution_count', 0)}]: "
        text = str(data.get("text/plain", ""))
        if "\n" in text and not text.startswith("\n"):
            text = "\n" + text
        bundle = {**data, "text/plain": prompt + text}
        if "text/html" in data:
            bundle["text/html"] = f'<pre><span style="color:#d00">{prompt}</span></pre>{data["text/html"]}'
        self.publish(bundle, {"engine": engine_id})
        self._last_header = ""
        self._at_line_start = True


def display_outputs(
    ar: AsyncResult, groupby: str = "type", result_only: bool = False, headers: bool = True
) -> None:
    """Show everything `ar`'s tasks produced: stdout, stderr, display data, then Out[] values.

    `groupby`: "type" (all stdout, then all stderr, ...), "engine" (everything of engine 0,
    then of engine 1, ...) or "order" (like type, but the i-th display of every engine together).
    With `result_only`, only the Out[] values (for output already streamed live). Without
    `headers` (one engine's result), the text comes without `[stdout:N]`/`[output:N]` lines.
    """
    if groupby not in GROUPINGS:
        raise ValueError(f"groupby must be one of {', '.join(GROUPINGS)}, not {groupby!r}")
    printer = OutputPrinter(headers)
    tasks = engine_outputs(ar)
    if groupby == "engine":
        for task in tasks:
            if not result_only:
                printer.stream(task.engine_id, "stdout", task.stdout)
                printer.stream(task.engine_id, "stderr", task.stderr)
                for i, output in enumerate(task.outputs):
                    printer.display(task.engine_id, output, header=i == 0)
            if task.execute_result is not None:
                printer.result(task.engine_id, task.execute_result)
        return
    if not result_only:
        for task in tasks:
            printer.stream(task.engine_id, "stdout", task.stdout)
        for task in tasks:
            printer.stream(task.engine_id, "stderr", task.stderr)
        if groupby == "order":
            for i in range(max((len(task.outputs) for task in tasks), default=0)):
                for task in tasks:
                    if i < len(task.outputs):
                        printer.display(task.engine_id, task.outputs[i])
        else:
            for task in tasks:
                for i, output in enumerate(task.outputs):
                    printer.display(task.engine_id, output, header=i == 0)
    show_results(ar, printer)


def show_results(ar: AsyncResult, printer: OutputPrinter | None = None) -> None:
    """Show the Out[engine:count] value of every task that has one, in engine order."""
    printer = printer or OutputPrinter()
    for task in engine_outputs(ar):
        if task.execute_result is not None:
            printer.result(task.engine_id, task.execute_result)


class LiveOutput:
    """Shows an AsyncResult's output while it runs, printing from the waiting (main) thread.

    The transport thread only signals that something arrived; the waiting thread prints what is
    new, so every line lands in the right notebook cell and nothing is shown twice or lost.

    >>> live = LiveOutput(ar)
    >>> while not ar.done():
    ...     if live.wait(0.1):
    ...         live.show_new()
    >>> live.close()
    """

    def __init__(self, ar: AsyncResult, printer: OutputPrinter | None = None) -> None:
        self.ar = ar
        self.printer = printer or OutputPrinter()
        n = len(ar)
        self._stdout = [0] * n
        self._stderr = [0] * n
        self._displays = [0] * n
        self._arrived = threading.Event()
        ar.output_hooks.append(self._on_output)
        ar.add_done_callback(lambda _: self._arrived.set())
        self._arrived.set()  # show what came before we listened

    def _on_output(self, engine_id: int, stream: str, text: str) -> None:
        self._arrived.set()

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for output (or the end); True if there may be some to show."""
        if not self._arrived.wait(timeout):
            return False
        self._arrived.clear()
        self.ar.wait(BURST_SECONDS)
        return True

    def show_new(self) -> None:
        """Print the output that arrived since the last call."""
        # Offsets move before printing: a Ctrl-C landing in print() must not show text twice.
        for i, task in enumerate(engine_outputs(self.ar)):
            new_stdout, self._stdout[i] = task.stdout[self._stdout[i] :], len(task.stdout)
            self.printer.stream(task.engine_id, "stdout", new_stdout)
            new_stderr, self._stderr[i] = task.stderr[self._stderr[i] :], len(task.stderr)
            self.printer.stream(task.engine_id, "stderr", new_stderr)
            new_outputs, self._displays[i] = task.outputs[self._displays[i] :], len(task.outputs)
            for output in new_outputs:
                self.printer.display(task.engine_id, output)

    def close(self) -> None:
        """Stop listening and show whatever is still new."""
        if self._on_output in self.ar.output_hooks:
            self.ar.output_hooks.remove(self._on_output)
        self.show_new()
