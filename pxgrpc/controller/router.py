"""Task routing: from client sessions to engines and back.

Direct tasks go straight down their engine's work stream (the engine queues them); load-balanced
tasks wait for the `balancer`. Results and output go back to their session (`sessions` keeps the
named ones across broken streams and controller restarts); `engine_loss` settles the tasks of
engines that die.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from pxgrpc import wire
from pxgrpc.controller.balancer import LoadBalancer, assign
from pxgrpc.controller.blobs import BlobStore
from pxgrpc.controller.engine_loss import EngineLoss
from pxgrpc.controller.registry import EngineRecord, EngineRegistry
from pxgrpc.controller.returning import ReturningEngines
from pxgrpc.controller.sessions import SessionBook, split_key
from pxgrpc.controller.tasks import ClientSession, TaskRecord, failure
from pxgrpc.recentids import RecentIds

log = logging.getLogger(__name__)

#: How many aborts of task ids not known here yet are remembered (`TaskRouter.abort`).
EARLY_ABORTS = 4096


class TaskRouter:
    """Sends tasks to engines, results to sessions, and recovers when engines die."""

    def __init__(self, registry: EngineRegistry, blobs: BlobStore, prefetch: int = 4) -> None:
        self.registry = registry
        self.blobs = blobs
        self.balancer = LoadBalancer(registry, self._release, prefetch)
        self.loss = EngineLoss(registry, self.balancer, self._release)
        self._result_blob_owner: dict[str, ClientSession] = {}
        #: Sessions the client named: they outlive their streams (and a controller restart).
        self.sessions = SessionBook()
        #: Tasks for engines a restored controller expects back (see `returning`).
        self.returning = ReturningEngines()
        # Aborts of tasks not known here when they came: direct tasks that their client
        # announces a few milliseconds after sending them (`_track_direct` aborts them then).
        self._early_aborts = RecentIds(EARLY_ABORTS)
        registry.watchers.add(self.settle)

    # --- submission -------------------------------------------------------------------------

    def submit(self, session: ClientSession, submit: wire.pb.SubmitTask) -> None:
        """Route one task, or answer it at once with an error naming what is wrong with it."""
        self._route(session, submit)
        self.schedule()

    def submit_batch(self, session: ClientSession, submits: Iterable[wire.pb.SubmitTask]) -> None:
        """Route many tasks, then hand the load-balanced ones out in one pass."""
        for submit in submits:
            self._route(session, submit)
        self.schedule()

    def _route(self, session: ClientSession, submit: wire.pb.SubmitTask) -> None:
        if submit.sent_direct:
            self._track_direct(session, submit)
            return
        problem = self._check(session, submit)
        if problem is not None:
            ename, evalue = problem
            session.emit(failure(submit.task_id, -1, wire.TASK_ERROR, ename, evalue))
            return
        if self._aborted_early(submit.task_id):  # (the Abort call and the session stream race)
            session.emit(_aborted(submit.task_id))
            return
        record = TaskRecord(
            key=session.key(submit.task_id),
            task_id=submit.task_id,
            session=session,
            action=submit.action,
            encoding=submit.encoding,
            load_balanced=submit.load_balanced,
            retries=max(0, submit.retries),
            blob_ids=list(submit.blob_ids),
            direct_results=submit.direct_results and not submit.load_balanced,
        )
        for blob_id in record.blob_ids:
            self.blobs.ref(blob_id)
        record.shared_blobs = self.blobs.shared_headers(record.blob_ids)
        session.tasks[submit.task_id] = record
        if record.load_balanced:
            self.balancer.queue.append(record)
        elif (engine := self.registry.get(submit.engine_id)) is not None:
            assign(record, engine)
        else:  # (checked above: an engine a restored controller expects back)
            self.returning.hold(submit.engine_id, record)

    def _track_direct(self, session: ClientSession, submit: wire.pb.SubmitTask) -> None:
        """A client sent a task straight to its engine: hold it as in flight there (not sending
        it), so that the engine's death fails it with the reason. The engine's own word
        (`direct_started`, `direct_finished`) may come first: then there is nothing to do. Sent
        to an earlier process under that engine id (`sent_to`): it is answered at once."""
        if not submit.task_id or not session.client_id:
            return
        key = session.key(submit.task_id)
        engine = self.registry.get(submit.engine_id)
        if engine is None:
            self._track_late(session, submit, key)
            return
        if submit.sent_to and submit.sent_to != engine.data_url:
            why = (
                f"engine {engine.engine_id} was replaced by a new process before it took this task: "
                f"the one it was sent to (at {submit.sent_to}) is gone"
            )
            session.emit(failure(submit.task_id, engine.engine_id, wire.TASK_ENGINE_DIED, "EngineError", why))
            return
        if engine.forget_direct_finished(key):
            self._aborted_early(submit.task_id)  # (it ran: nothing left to abort)
            return
        record = engine.inflight.get(key)
        if record is not None:  # told of by the engine already
            record.announced = True
        elif submit.task_id in session.tasks:
            return
        else:
            record = TaskRecord.held(key, submit.task_id, session)
            record.announced = True
            session.tasks[submit.task_id] = record
            engine.announced[key] = record
        self._abort_if_early(engine, record)

    def _track_late(self, session: ClientSession, submit: wire.pb.SubmitTask, key: str) -> None:
        """A direct task announced after its engine was lost (clients announce a few
        milliseconds late): it fails with the engine's death; ignored if no such engine was lost
        lately."""
        if submit.task_id in session.tasks:
            return
        record = TaskRecord.held(key, submit.task_id, session)
        record.announced = True
        session.tasks[submit.task_id] = record  # (before: the engine's loss may settle it at once)
        if not self.loss.late_announcement(submit.engine_id, record):
            session.tasks.pop(submit.task_id, None)

    def _check(self, session: ClientSession, submit: wire.pb.SubmitTask) -> tuple[str, str] | None:
        if not submit.task_id:
            return "InvalidArgument", "SubmitTask.task_id: required"
        if submit.task_id in session.tasks:
            return (
                "InvalidArgument",
                f"SubmitTask.task_id: {submit.task_id!r} is already in use in this session",
            )
        if submit.action.WhichOneof("kind") is None:
            return "InvalidArgument", "SubmitTask.action: one of execute, apply, push, pull is required"
        if submit.encoding not in (
            wire.ENCODING_PICKLE,
            wire.ENCODING_TYPED_ONLY,
            wire.ENCODING_TYPED_OR_REPR,
        ):
            return "InvalidArgument", f"SubmitTask.encoding: unknown value {submit.encoding}"
        if (
            not submit.load_balanced
            and self.registry.get(submit.engine_id) is None
            and not self.sessions.expects(submit.engine_id)
        ):
            ids = [e.engine_id for e in self.registry.live()]
            return (
                "InvalidTargetError",
                f"SubmitTask.engine_id: no engine {submit.engine_id} (engines: {ids})",
            )
        for blob_id in submit.blob_ids:
            # Only the id's shape: a ref/unref probe would drop a complete blob nobody holds yet.
            if not wire.BLOB_ID_RE.match(blob_id):
                problem = f"SubmitTask.blob_ids: {blob_id!r} is not 1-64 characters of [A-Za-z0-9_-]"
                return "InvalidArgument", problem
        return None

    def schedule(self) -> None:
        """Hand queued load-balanced tasks to engines with room (see `LoadBalancer.schedule`)."""
        self.balancer.schedule()

    @property
    def unassigned(self) -> int:
        """How many tasks wait for an engine: load-balanced ones, and those for engines a
        restored controller expects back."""
        return len(self.balancer.queue) + len(self.returning)

    # --- results ----------------------------------------------------------------------------

    def on_events(self, engine: EngineRecord, events: Iterable[wire.pb.TaskEvent]) -> None:
        """Events from an engine (one message's worth): forward output, settle results, then
        refill the engines in one pass."""
        for event in events:
            self._on_event(engine, event)
        self.schedule()

    def on_event(self, engine: EngineRecord, event: wire.pb.TaskEvent) -> None:
        """One event from an engine."""
        self.on_events(engine, (event,))

    def _on_event(self, engine: EngineRecord, event: wire.pb.TaskEvent) -> None:
        kind = event.WhichOneof("kind")
        if kind == "result":
            self._on_result(engine, event)
            return
        inner = event.output if kind == "output" else event.data if kind == "data" else event.display
        record = engine.inflight.get(inner.task_id)
        session = record.session if record is not None else None
        if record is None:  # a task from before a restart: its session may be back already
            client_id, task_id = split_key(inner.task_id)
            session = self.sessions.get(client_id) if client_id else None
            record = session.tasks.get(task_id) if session is not None else None
        if record is not None and session is not None:
            inner.task_id = record.task_id
            inner.engine_id = engine.engine_id
            session.emit(event)

    def _on_result(self, engine: EngineRecord, event: wire.pb.TaskEvent) -> None:
        result = event.result
        record = engine.inflight.pop(result.task_id, None)
        if record is None:
            record = self._stray(engine, result.task_id)
            if record is None:
                return
        engine.head_since = time.monotonic()
        if record.stealing and result.status == wire.TASK_ABORTED:
            engine.load_balanced_inflight -= 1
            record.stealing = False
            self.balancer.queue.appendleft(record)
            return
        engine.completed += 1
        if record.load_balanced:
            engine.load_balanced_inflight -= 1
            if result.completed >= result.started > 0:
                engine.observe(result.completed - result.started)
        result.task_id = record.task_id
        result.engine_id = engine.engine_id
        result.submitted = record.submitted
        session = record.session
        for blob_id in result.blob_ids:
            if session.closed:
                continue
            self.blobs.ref(blob_id)
            session.result_blobs.add(blob_id)
            self._result_blob_owner[blob_id] = session
        self._release(record)
        session.emit(event)

    def _stray(self, engine: EngineRecord, key: str) -> TaskRecord | None:
        """A result the engine did not hold here: resent after a restart or a broken stream. It
        goes to its named session (which drops repeats by task id), parked if need be."""
        client_id, task_id = split_key(key)
        if not client_id:
            log.debug("engine %d sent a result for unknown task %s", engine.engine_id, key)
            return None
        session = self.sessions.named(client_id)
        record = session.tasks.get(task_id)
        if record is None:
            record = TaskRecord.held(key, task_id, session)
        for other in self.registry.live():  # held elsewhere (e.g. adopted): not any more
            other.inflight.pop(key, None)
            other.announced.pop(key, None)
        return record

    def adopt(self, engine: EngineRecord, keys: Iterable[str]) -> None:
        """A re-registered engine holds these tasks from before: route their results, and fail
        them should the engine die."""
        for key in keys:
            client_id, task_id = split_key(key)
            if not client_id or key in engine.inflight:
                continue
            announced = engine.announced.pop(key, None)
            if announced is not None:  # the engine has it now (and counts as busy with it)
                engine.inflight[key] = announced
                continue
            session = self.sessions.named(client_id)
            record = session.tasks.get(task_id)
            if record is None:
                record = TaskRecord.held(key, task_id, session)
                session.tasks[task_id] = record
            engine.inflight[key] = record
            self._abort_if_early(engine, record)
        self.settle()

    def _abort_if_early(self, engine: EngineRecord, record: TaskRecord) -> None:
        """Abort a direct task now heard of, if an abort of it came before (see `abort`)."""
        if self._aborted_early(record.task_id):
            engine.send_abort([record.key])
            record.stealing = False

    def _aborted_early(self, task_id: str) -> bool:
        """Whether an abort of `task_id` came before the task was known here (forgotten now)."""
        return self._early_aborts.take(task_id)

    def resume(self, session: ClientSession, client_id: str, task_ids: Iterable[str]) -> None:
        """A session stream names itself (and lists the tasks it still waits for)."""
        if client_id:
            self.sessions.attach(session, client_id)
            for blob_id in session.result_blobs:
                self._result_blob_owner[blob_id] = session
        self.sessions.resume(session, task_ids)
        self.settle()

    def settle(self) -> None:
        """Answer resumed tasks that nobody holds (once engines had their chance to return)."""
        live = [e.engine_id for e in self.registry.live()]
        self.sessions.settle(live, lambda s, t: t in s.tasks or t in s.pending_results())
        if self.returning:
            self.returning.release(self.registry, self.sessions.expected_engines, assign, self._release)

    def expire_parked(self) -> None:
        """Drop parked sessions whose client did not come back."""
        for session in self.sessions.expired():
            self._close(session)

    def _release(self, record: TaskRecord) -> None:
        record.session.tasks.pop(record.task_id, None)
        for blob_id in record.blob_ids:
            self.blobs.unref(blob_id)

    def result_blob_done(self, blob_id: str) -> None:
        """A client has downloaded a result blob: it is no longer needed."""
        session = self._result_blob_owner.pop(blob_id, None)
        if session is not None:
            session.result_blobs.discard(blob_id)
            self.blobs.unref(blob_id)

    # --- failures and control ---------------------------------------------------------------

    def engine_lost(self, engine: EngineRecord, reason: str) -> None:
        """Fail (or re-queue) the tasks of an engine that died or went away (see `EngineLoss`)."""
        self.loss.engine_lost(engine, reason)

    def engine_exited(self, report: wire.pb.EngineExit) -> int | None:
        """A supervisor's report of how an engine process ended (see `EngineLoss.engine_exited`)."""
        return self.loss.engine_exited(report)

    def abort(self, session: ClientSession | None, task_ids: list[str], engine_ids: list[int]) -> list[str]:
        """Abort queued tasks by client task id (of `session`) or all tasks of some engines.

        A task id not known here may be a direct task that its client has not announced yet
        (it does so a few milliseconds after sending it, if it has no result by then), or a
        task whose submission is still on its way: it is aborted when it comes. The ids
        returned are those known now."""
        aborted: list[str] = []
        wanted = set(task_ids)
        for record in list(self.balancer.queue):
            if record.task_id in wanted and (session is None or record.session is session):
                self.balancer.queue.remove(record)
                self._release(record)
                record.session.emit(_aborted(record.task_id))
                aborted.append(record.task_id)
        for record in self.returning.remove(
            lambda engine_id, r: (
                engine_id in engine_ids or (r.task_id in wanted and (session is None or r.session is session))
            )
        ):
            self._release(record)
            record.session.emit(_aborted(record.task_id))
            aborted.append(record.task_id)
        for engine in self.registry.live():
            # (Direct tasks the engine has not told of yet may wait in its queue too: `held`.)
            records = [
                r
                for r in engine.held()
                if engine.engine_id in engine_ids
                or (r.task_id in wanted and (session is None or r.session is session))
            ]
            if records:
                engine.send_abort([r.key for r in records])
                for record in records:
                    record.stealing = False  # aborted for good, not to run elsewhere
                aborted.extend(r.task_id for r in records)
        for task_id in wanted.difference(aborted):
            self._early_aborts.add(task_id)
        return aborted

    def close_session(self, session: ClientSession) -> None:
        """The stream of a session ended: park a named one for its client, else drop what only
        it needed."""
        if self.sessions.park(session):
            return
        self._close(session)

    def _close(self, session: ClientSession) -> None:
        session.closed = True
        for blob_id in list(session.result_blobs):
            self.result_blob_done(blob_id)
        for record in list(self.balancer.queue):
            if record.session is session:
                self.balancer.queue.remove(record)
                self._release(record)
        for record in self.returning.of_session(session):
            self._release(record)


def _aborted(task_id: str) -> wire.pb.TaskEvent:
    """The result of a task the controller dropped before it started."""
    return failure(task_id, -1, wire.TASK_ABORTED, "TaskAborted", "aborted before it started")
