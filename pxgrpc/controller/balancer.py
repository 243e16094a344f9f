"""Load balancing: the queue of load-balanced tasks and how they are handed to engines.

Load-balanced tasks wait in one queue and go to the least-loaded engine, a few at a time per
engine (more as its tasks prove short) so that no engine idles while it waits for the next
task; an idle engine takes back the tasks queued behind a long-running one.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from pxgrpc.controller.registry import EngineRecord, EngineRegistry
from pxgrpc.controller.tasks import TaskRecord

#: Load-balanced work an engine may hold, in expected seconds of running time: enough to keep it
#: busy while its results travel to the controller and new tasks come back, and to batch many
#: short tasks into each message. `--prefetch` tasks are always allowed.
PIPELINE_SECONDS = 0.004
#: What handling one task costs an engine besides running it (decoding, encoding, messaging).
TASK_OVERHEAD = 50e-6
#: The most load-balanced tasks one engine may hold, however short they are.
MAX_PREFETCH = 256
#: An idle engine takes back the tasks queued behind a task that has been running this long
#: (and longer than a few of its engine's recent tasks), so that prefetching never leaves
#: tasks waiting behind a long one while an engine idles.
STEAL_AFTER = 0.05


def _load(engine: EngineRecord) -> tuple[int, int]:
    """How busy an engine is, for choosing the least-loaded one (ties go to the lowest id)."""
    return len(engine.inflight), engine.engine_id


def assign(record: TaskRecord, engine: EngineRecord) -> None:
    """Send a task to an engine and count it as the engine's."""
    if not engine.inflight:
        engine.head_since = time.monotonic()
    engine.inflight[record.key] = record
    if record.load_balanced:
        engine.load_balanced_inflight += 1
    engine.send_task(record.to_task(on_this_host=engine.on_controller_host))


class LoadBalancer:
    """The queue of load-balanced tasks no engine holds yet, and the policy that empties it.

    `release` drops a task whose session closed while it waited (the router's bookkeeping).
    """

    def __init__(
        self, registry: EngineRegistry, release: Callable[[TaskRecord], None], prefetch: int = 4
    ) -> None:
        self.registry = registry
        self.prefetch = prefetch
        #: Waiting tasks, first in line first; the router requeues and removes them too.
        self.queue: deque[TaskRecord] = deque()
        self._release = release
        self._steal_timer: asyncio.TimerHandle | None = None

    def schedule(self) -> None:
        """Hand queued load-balanced tasks to the least-loaded engines that have room.

        An engine's room grows as its tasks prove short (see `EngineRecord.capacity`), so that
        tiny tasks travel many to a message while long ones are not hoarded by one engine.
        """
        if not self.queue:
            # (The common case, after every message of an engine running direct tasks: only
            # tasks stuck behind long ones may want taking back, and only if some engine
            # holds two. No sorting of every engine per message.)
            if any(e.load_balanced_inflight >= 2 for e in self.registry.records()):
                engines = self.registry.live()
                if any(not e.inflight for e in engines):
                    self._steal(engines)
            return
        engines = self.registry.live()
        open_engines = [e for e in engines if e.load_balanced_inflight < self._capacity(e)]
        while self.queue and open_engines:
            engine = min(open_engines, key=_load)
            record = self.queue.popleft()
            if record.session.closed:
                self._release(record)
                continue
            assign(record, engine)
            if engine.load_balanced_inflight >= self._capacity(engine):
                open_engines.remove(engine)
        if not self.queue and any(not e.inflight for e in engines):
            self._steal(engines)

    def _steal(self, engines: list[EngineRecord]) -> None:
        """Some engine idles: ask back the load-balanced tasks queued behind long-running ones
        (they are requeued when the engine confirms it had not started them)."""
        now = time.monotonic()
        wake_in = None
        for engine in engines:
            if engine.load_balanced_inflight < 2:
                continue
            patience = max(STEAL_AFTER, 4 * engine.task_seconds)
            running = now - engine.head_since
            if running < patience:
                wake_in = patience - running if wake_in is None else min(wake_in, patience - running)
                continue
            queued = [r for r in list(engine.inflight.values())[1:] if r.load_balanced and not r.stealing]
            for record in queued:
                record.stealing = True
            if queued:
                engine.send_abort([r.key for r in queued])
        if wake_in is not None and self._steal_timer is None:
            self._steal_timer = asyncio.get_running_loop().call_later(wake_in, self._steal_later)

    def _steal_later(self) -> None:
        self._steal_timer = None
        self.schedule()

    def _capacity(self, engine: EngineRecord) -> int:
        return engine.capacity(self.prefetch, PIPELINE_SECONDS, TASK_OVERHEAD, MAX_PREFETCH)
