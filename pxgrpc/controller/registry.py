"""The engines the controller knows: ids, liveness, and what each one is working on."""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pxgrpc import sharedmem, wire
from pxgrpc.controller.tasks import TaskRecord

log = logging.getLogger(__name__)

#: How many direct tasks finished before their announcement an engine record remembers.
DIRECT_FINISHED_KEPT = 4096


@dataclass(eq=False)
class EngineRecord:
    """One registered engine and the commands waiting to go down its work stream."""

    engine_id: int
    hostname: str
    pid: int
    python_version: str
    data_url: str
    registration_token: str
    protocol_version: str = ""
    cloudpickle_version: str = ""
    #: Its host for shared memory (the boot id), "" when it shares none.
    host_key: str = ""
    #: Its task lane (`RegisterRequest.lane_path`), "" when it has none.
    lane_path: str = ""
    #: Its host is the controller's (`host_key` is ours): its tasks name the shared copies of
    #: their blobs (known at registration, not worked out per task).
    on_controller_host: bool = False
    #: A supervisor reports how the engine process ends (`Engine.ReportExit`).
    supervised: bool = False
    #: How the engine process ended, from its supervisor's report ("" until reported).
    exit_report: str = ""
    registered: float = field(default_factory=time.time)
    connected: bool = False
    dead: bool = False
    completed: int = 0
    last_seen: float = field(default_factory=time.monotonic)
    inflight: dict[str, TaskRecord] = field(default_factory=dict)
    #: Direct tasks their client announced (`SubmitTask.sent_direct`) that the engine has not
    #: told of yet (`direct_started` moves them to `inflight`): its death fails them too.
    announced: dict[str, TaskRecord] = field(default_factory=dict)
    load_balanced_inflight: int = 0
    #: Running time of its recent load-balanced tasks (moving average, seconds); -1 until known.
    task_seconds: float = -1.0
    #: When the task at the head of `inflight` started, about (time.monotonic()).
    head_since: float = field(default_factory=time.monotonic)
    #: Direct tasks finished before their client announced them (`SubmitTask.sent_direct`).
    _direct_finished: collections.OrderedDict[str, None] = field(default_factory=collections.OrderedDict)
    _tasks: list[wire.pb.Task] = field(default_factory=list)
    _aborts: list[str] = field(default_factory=list)
    #: The signal of an interrupt not yet sent down the work stream (0: none).
    _interrupt: int = 0
    #: The name of the last signal other than SIGINT sent to the engine (it may end the engine).
    signalled: str = ""
    _shutdown: bool = False
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)

    def remember_direct_finished(self, key: str) -> None:
        """A direct task finished that nobody announced (yet): drop its announcement, should
        it come (the most recent ones only: a client that does not announce leaves no trace)."""
        self._direct_finished[key] = None
        if len(self._direct_finished) > DIRECT_FINISHED_KEPT:
            self._direct_finished.popitem(last=False)

    def drop_direct_finished(self) -> None:
        """(A lost engine.) Forget its direct tasks' notices: a client announces only tasks it
        has no result for, and those fail with the engine however they ended."""
        self._direct_finished.clear()

    def forget_direct_finished(self, key: str) -> bool:
        """Whether the direct task `key` finished before its announcement (forgetting it)."""
        return self._direct_finished.pop(key, 0) is None

    def observe(self, seconds: float) -> None:
        """A load-balanced task ran for `seconds`: update the moving average."""
        if self.task_seconds < 0:
            self.task_seconds = seconds
        else:
            self.task_seconds += 0.25 * (seconds - self.task_seconds)

    def capacity(self, prefetch: int, window: float, overhead: float, most: int) -> int:
        """How many load-balanced tasks the engine may hold: about `window` seconds of work at
        its recent pace, at least `prefetch` (also while the pace is unknown), at most `most`."""
        if self.task_seconds < 0:
            return prefetch
        return max(prefetch, min(most, int(window / (self.task_seconds + overhead))))

    def send_task(self, task: wire.pb.Task) -> None:
        self._tasks.append(task)
        self._wakeup.set()

    def send_abort(self, task_ids: list[str]) -> None:
        self._aborts.extend(task_ids)
        self._wakeup.set()

    def send_interrupt(self, signal_number: int = signal.SIGINT) -> None:
        """Interrupt the running task with `signal_number` (SIGINT: KeyboardInterrupt only)."""
        if signal_number != signal.SIGINT:
            self._interrupt = signal_number  # (a SIGINT does not replace another queued signal)
            self.signalled = signal.Signals(signal_number).name
        elif not self._interrupt:
            self._interrupt = signal_number
        self._wakeup.set()

    def send_shutdown(self) -> None:
        self._shutdown = True
        self._wakeup.set()

    async def next_command(self) -> wire.pb.EngineCommand | None:
        """Everything queued for the engine as one batched command; None once it is dead."""
        while not (self._tasks or self._aborts or self._interrupt or self._shutdown or self.dead):
            self._wakeup.clear()
            await self._wakeup.wait()
        if self.dead:
            return None
        command = wire.pb.EngineCommand(
            tasks=self._tasks,
            abort_task_ids=self._aborts,
            interrupt=bool(self._interrupt),
            interrupt_signal=self._interrupt,
            shutdown=self._shutdown,
        )
        self._tasks, self._aborts = [], []
        self._interrupt = 0
        if self._shutdown:
            self.dead = True
        return command

    def mark_dead(self) -> None:
        self.dead = True
        self._wakeup.set()

    def held(self) -> list[TaskRecord]:
        """Its tasks in order (the running one first), then the direct tasks their client
        announced that it has not told of yet."""
        return [*self.inflight.values(), *self.announced.values()]

    def info(self) -> wire.pb.EngineInfo:
        state = wire.ENGINE_DEAD if self.dead else wire.ENGINE_BUSY if self.inflight else wire.ENGINE_IDLE
        return wire.pb.EngineInfo(
            engine_id=self.engine_id,
            hostname=self.hostname,
            pid=self.pid,
            state=state,
            queue=len(self.held()),
            completed=self.completed,
            registered=self.registered,
            data_url=self.data_url,
            python_version=self.python_version,
            protocol_version=self.protocol_version,
            cloudpickle_version=self.cloudpickle_version,
            host_key=self.host_key,
            lane_path=self.lane_path,
        )


class IdTaken(ValueError):
    """A registration asked for an engine id it cannot have; the message says why."""

    def __init__(self, message: str, *, invalid: bool = False) -> None:
        super().__init__(message)
        #: True for an id that is never valid (negative), False for one already held.
        self.invalid = invalid


class EngineRegistry:
    """Engines by id. Ids are handed out 0, 1, 2 ... in registration order and never reused;
    an engine may ask for a particular id instead (its MPI rank), which later ids skip."""

    def __init__(self) -> None:
        self._engines: dict[int, EngineRecord] = {}
        self._next_id = 0
        self.changed = asyncio.Event()
        #: Grows whenever an engine joins or goes away (ListEnginesReply.generation).
        self.generation = 0
        #: Called (with no arguments) after every such change.
        self.watchers: set[Callable[[], None]] = set()

    @property
    def next_id(self) -> int:
        """The id the next engine that asks for none gets."""
        return self._next_id

    def restore(self, next_id: int) -> None:
        """A restored controller: ids below `next_id` were given out before (their engines come
        back asking for them)."""
        self._next_id = max(self._next_id, next_id)

    def register(self, request: wire.pb.RegisterRequest) -> EngineRecord:
        """Record a new engine; IdTaken when its `requested_id` is negative or held."""
        engine_id = self._next_id
        if request.HasField("requested_id"):
            engine_id = self._claim(request.requested_id)
        engine = EngineRecord(
            engine_id=engine_id,
            hostname=request.hostname,
            pid=request.pid,
            python_version=request.python_version,
            data_url=request.data_url,
            registration_token=secrets.token_hex(16),
            protocol_version=request.protocol_version,
            cloudpickle_version=request.cloudpickle_version,
            host_key=request.host_key,
            lane_path=request.lane_path if request.host_key else "",
            on_controller_host=bool(request.host_key) and request.host_key == sharedmem.host_key(),
            supervised=request.supervised,
        )
        self._next_id = max(self._next_id, engine_id + 1)
        self._engines[engine.engine_id] = engine
        log.info("engine %d registered (pid %d on %s)", engine.engine_id, engine.pid, engine.hostname)
        return engine

    def _claim(self, engine_id: int) -> int:
        if engine_id < 0:
            raise IdTaken(f"requested_id: engine ids are 0 or more, not {engine_id}", invalid=True)
        holder = self._engines.get(engine_id)
        if holder is not None and not holder.dead:
            raise IdTaken(
                f"requested_id: engine id {engine_id} is taken (by pid {holder.pid} on {holder.hostname}); "
                "each engine of an MPI launch must have its own rank"
            )
        return engine_id

    def get(self, engine_id: int) -> EngineRecord | None:
        engine = self._engines.get(engine_id)
        return engine if engine is not None and not engine.dead else None

    def by_process(self, hostname: str, pid: int) -> EngineRecord | None:
        """The registered engine that is process `pid` on `hostname`, if any."""
        for engine in self._engines.values():
            if engine.pid == pid and engine.hostname == hostname and not engine.dead:
                return engine
        return None

    def records(self) -> Iterable[EngineRecord]:
        """Every engine record held, live or not, in no particular order (cheap: no copy)."""
        return self._engines.values()

    def live(self) -> list[EngineRecord]:
        """Connected engines that are alive, in id order."""
        live = [e for e in self._engines.values() if e.connected and not e.dead]
        return sorted(live, key=lambda e: e.engine_id)  # requested ids (MPI ranks) come in any order

    def remove(self, engine: EngineRecord) -> bool:
        """Forget a dead or departing engine; False if it was already gone."""
        engine.mark_dead()
        if self._engines.get(engine.engine_id) is not engine:
            return False
        del self._engines[engine.engine_id]
        self._signal()
        return True

    def _signal(self) -> None:
        self.generation += 1
        self.changed.set()
        self.changed = asyncio.Event()
        for watcher in list(self.watchers):
            watcher()

    def engine_list(self) -> wire.pb.ListEnginesReply:
        """The live engines, as ListEngines answers and sessions are told."""
        return wire.pb.ListEnginesReply(engines=[e.info() for e in self.live()], generation=self.generation)

    def connected(self, engine: EngineRecord) -> None:
        engine.connected = True
        self._signal()

    def silent_engines(self, timeout: float) -> list[EngineRecord]:
        now = time.monotonic()
        return [e for e in self.live() if now - e.last_seen > timeout]

    def stale_registrations(self, timeout: float) -> list[EngineRecord]:
        """Registered engines that never opened their work stream."""
        now = time.time()
        return [e for e in self._engines.values() if not e.connected and now - e.registered > timeout]
