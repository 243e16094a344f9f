"""A real Jupyter kernel (ipykernel) driven cell by cell, with every iopub message kept."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jupyter_client import KernelManager

Message = dict[str, Any]

_STDOUT_HEADER = re.compile(r"\[stdout:(\d+)\] \n")


@dataclass
class Cell:
    """What running one cell produced: the iopub messages in arrival order, and the reply."""

    msg_id: str
    messages: list[Message] = field(default_factory=list)
    reply: Message | None = None

    def of_type(self, msg_type: str) -> list[dict[str, Any]]:
        return [m["content"] for m in self.messages if m["msg_type"] == msg_type]

    def stream(self, name: str = "stdout") -> str:
        return "".join(c["text"] for c in self.of_type("stream") if c["name"] == name)

    def plain(self) -> list[str]:
        """text/plain of every display_data and execute_result, in order."""
        kinds = ("display_data", "execute_result")
        return [m["content"]["data"].get("text/plain", "") for m in self.messages if m["msg_type"] in kinds]

    def summary(self) -> str:
        """The cell's outputs, one per line, for assertion messages."""
        lines = []
        for m in self.messages:
            content = m["content"]
            if m["msg_type"] == "stream":
                lines.append(f"{content['name']}: {content['text']!r}")
            elif m["msg_type"] in ("display_data", "execute_result"):
                lines.append(f"{m['msg_type']}: {content['data']!r}")
            elif m["msg_type"] == "error":
                lines.append("error: " + "\n".join(content["traceback"]))
        return "\n".join(lines)

    @property
    def status(self) -> str:
        assert self.reply is not None
        return str(self.reply["content"]["status"])

    def error(self) -> dict[str, Any]:
        errors = self.of_type("error")
        assert errors, f"no error output; got {self.messages}"
        return errors[0]


def stdout_blocks(text: str) -> dict[int, str]:
    """`[stdout:N] \\n...` output as {engine: text} (chunks of one engine joined)."""
    parts = _STDOUT_HEADER.split(text)
    blocks: dict[int, str] = {}
    for engine, body in zip(parts[1::2], parts[2::2], strict=True):
        blocks[int(engine)] = blocks.get(int(engine), "") + body
    return blocks


class KernelSession:
    """Start a python3 kernel with `env`; run cells and collect what they produce."""

    def __init__(self, env: dict[str, str]) -> None:
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env=env)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def submit(self, code: str) -> Cell:
        return Cell(self.kc.execute(code))

    def read_until(self, cell: Cell, done: Callable[[Cell], bool], timeout: float = 60) -> Cell:
        """Collect the cell's iopub messages until `done(cell)` holds."""
        while not done(cell):
            msg = self.kc.get_iopub_msg(timeout=timeout)
            if msg["parent_header"].get("msg_id") == cell.msg_id:
                cell.messages.append(msg)
        return cell

    def finish(self, cell: Cell, timeout: float = 60) -> Cell:
        """Collect everything up to the kernel going idle, then the execute reply."""
        self.read_until(cell, _idle, timeout)
        while cell.reply is None:
            reply = self.kc.get_shell_msg(timeout=timeout)
            if reply["parent_header"].get("msg_id") == cell.msg_id:
                cell.reply = reply
        return cell

    def run(self, code: str, timeout: float = 60) -> Cell:
        return self.finish(self.submit(code), timeout)

    def interrupt(self) -> None:
        self.km.interrupt_kernel()

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def _idle(cell: Cell) -> bool:
    return any(m["msg_type"] == "status" and m["content"]["execution_state"] == "idle" for m in cell.messages)
