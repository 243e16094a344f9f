"""Why engines died: supervisors' exit reports, and the wait for them.

A supervised engine (`pxgrpc-engine --restart`) has a supervisor process that sees it end and
calls `Engine.ReportExit` with its exit status, signal and last stderr lines. The controller
usually notices the broken `Work` stream first; it then holds the engine's tasks for up to
`REPORT_WAIT` seconds so that their EngineError can quote the report (`ExitReports.await_report`).
"""

from __future__ import annotations

import asyncio
import collections
import signal
from collections.abc import Callable
from dataclasses import dataclass

from pxgrpc import wire
from pxgrpc.controller.registry import EngineRecord

#: Seconds the controller waits for a supervised engine's exit report before failing its tasks
#: with what it knows (the stream broke).
REPORT_WAIT = 5.0

#: How many lost supervised engines are remembered for reports that come late.
REMEMBERED_LOST = 1000

#: What a signal usually means, for the error message.
_SIGNAL_HINTS: dict[int, str] = {
    signal.SIGKILL: "as the kernel's OOM killer sends when memory runs out",
    signal.SIGSEGV: "a segmentation fault, in compiled code or the interpreter",
    signal.SIGABRT: "an abort, often a failed assertion in compiled code",
    signal.SIGBUS: "a bus error (bad memory access)",
}


def describe_exit(report: wire.pb.EngineExit) -> str:
    """How the process ended, in words, with its last stderr lines."""
    if report.signal:
        try:
            name = signal.Signals(report.signal).name
        except ValueError:
            name = f"signal {report.signal}"
        hint = _SIGNAL_HINTS.get(report.signal)
        text = f"was killed by {name}" + (f" ({hint})" if hint else "")
    else:
        text = f"exited with status {report.exit_code}"
    if report.stderr_tail:
        lines = "\n".join(f"    {line}" for line in report.stderr_tail)
        text += f"\n  last lines of its stderr:\n{lines}"
    return text


@dataclass
class _Pending:
    engine: EngineRecord
    reason: str
    timer: asyncio.TimerHandle


class ExitReports:
    """Lost supervised engines whose exit report has not arrived yet."""

    def __init__(self, settle: Callable[[EngineRecord, str], None]) -> None:
        #: Fails or re-queues a lost engine's tasks, given why it was lost.
        self._settle = settle
        self._pending: dict[tuple[str, int], _Pending] = {}
        #: Supervised engines lost lately, (host, pid) -> engine id: a report that comes after
        #: their tasks were settled (or when they had none) still names the id to reuse.
        self._lost: collections.OrderedDict[tuple[str, int], int] = collections.OrderedDict()

    def lost(self, engine: EngineRecord) -> None:
        """A supervised engine is gone: remember its id for its supervisor's report."""
        self._lost[(engine.hostname, engine.pid)] = engine.engine_id
        while len(self._lost) > REMEMBERED_LOST:
            self._lost.popitem(last=False)

    def lost_id(self, hostname: str, pid: int) -> int | None:
        """The id of the lost engine that was process `pid` on `hostname` (forgotten after)."""
        return self._lost.pop((hostname, pid), None)

    def await_report(self, engine: EngineRecord, reason: str) -> None:
        """Settle `engine` when its report comes, or with `reason` after REPORT_WAIT seconds."""
        key = (engine.hostname, engine.pid)
        timer = asyncio.get_running_loop().call_later(REPORT_WAIT, self._give_up, key)
        self._pending[key] = _Pending(engine, reason, timer)

    def _give_up(self, key: tuple[str, int]) -> None:
        pending = self._pending.pop(key, None)
        if pending is not None:
            self._settle(pending.engine, f"{pending.reason} (its supervisor sent no exit report)")

    def awaits(self, engine: EngineRecord) -> bool:
        """Whether `engine`'s tasks wait for its report."""
        pending = self._pending.get((engine.hostname, engine.pid))
        return pending is not None and pending.engine is engine

    def take(self, hostname: str, pid: int) -> EngineRecord | None:
        """The lost engine that was process `pid` on `hostname`, no longer waited for."""
        pending = self._pending.pop((hostname, pid), None)
        if pending is None:
            return None
        pending.timer.cancel()
        return pending.engine
