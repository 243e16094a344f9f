"""The controller's side of `SubmitTask.sent_direct`: a client's announcement of a task it sent
straight to an engine, reconciled with the engine's own notices whichever comes first."""

from __future__ import annotations

from pxgrpc import wire
from pxgrpc.controller.blobs import BlobStore
from pxgrpc.controller.engine_service import direct_finished
from pxgrpc.controller.registry import EngineRecord, EngineRegistry
from pxgrpc.controller.router import TaskRouter
from pxgrpc.controller.tasks import ClientSession

FIRST_URL = "127.0.0.1:40001"


def _setup() -> tuple[TaskRouter, EngineRecord, ClientSession]:
    router = TaskRouter(EngineRegistry(), BlobStore())
    engine = router.registry.register(wire.pb.RegisterRequest(hostname="h", pid=1, data_url=FIRST_URL))
    session = ClientSession()
    router.resume(session, "client1", [])
    return router, engine, session


def _announce(
    router: TaskRouter, session: ClientSession, task_id: str, engine_id: int = 0, sent_to: str = ""
) -> None:
    announcement = wire.pb.SubmitTask(task_id=task_id, engine_id=engine_id, sent_direct=True, sent_to=sent_to)
    router.submit(session, announcement)


def _results(session: ClientSession) -> list[wire.pb.TaskResult]:
    return [event.result for event, _, _ in session._events if event.WhichOneof("kind") == "result"]


def test_an_announced_task_is_in_flight_on_its_engine_and_fails_with_its_death() -> None:
    router, engine, session = _setup()
    _announce(router, session, "t1")
    assert list(engine.announced) == ["client1/t1"] and engine.inflight == {}
    assert engine._tasks == []  # nothing sent down its work stream
    router.engine_lost(engine, "died (no heartbeat for 2 s)")
    (result,) = _results(session)
    assert result.task_id == "t1" and result.status == wire.TASK_ENGINE_DIED
    assert "no heartbeat" in result.error.evalue


def test_the_engines_notices_and_the_announcement_meet_in_either_order() -> None:
    router, engine, session = _setup()
    # The engine's notices first: the late announcement leaves nothing behind.
    router.adopt(engine, ["client1/t1"])
    direct_finished(engine, ["client1/t1", "client1/t2"])
    _announce(router, session, "t1")
    _announce(router, session, "t2")
    # The announcement first: the engine's notices settle it.
    _announce(router, session, "t3")
    router.adopt(engine, ["client1/t3"])
    direct_finished(engine, ["client1/t3"])
    assert engine.inflight == {} and engine.announced == {} and session.tasks == {}
    assert _results(session) == []  # no errors for any of them


def test_an_announcement_for_an_unknown_engine_is_ignored() -> None:
    router, engine, session = _setup()
    _announce(router, session, "t1", engine_id=7)
    assert engine.inflight == {} and session.tasks == {} and _results(session) == []


def test_an_abort_reaches_an_announced_task_the_engine_has_not_told_of() -> None:
    # (An engine tells of a direct task only once it has been queued or running for a while.)
    router, engine, session = _setup()
    router.registry.connected(engine)
    _announce(router, session, "t1")
    assert router.abort(session, ["t1"], []) == ["t1"]
    assert engine._aborts == ["client1/t1"]  # down the engine's work stream


def test_an_abort_that_comes_before_the_announcement_aborts_the_task_once_announced() -> None:
    """(The client announces a direct task a few milliseconds after sending it.)"""
    router, engine, session = _setup()
    router.registry.connected(engine)
    assert router.abort(None, ["t1", "t2", "t3"], []) == []
    _announce(router, session, "t1")
    router.adopt(engine, ["client1/t2"])  # (the engine's notice before the announcement)
    assert engine._aborts == ["client1/t1", "client1/t2"]
    _announce(router, session, "t2")
    direct_finished(engine, ["client1/t3"])  # (it ran before the abort reached anyone)
    _announce(router, session, "t3")
    _announce(router, session, "t4")  # (never aborted)
    assert engine._aborts == ["client1/t1", "client1/t2"] and router._early_aborts == {}


def test_a_relayed_task_whose_abort_came_first_is_aborted_when_it_comes() -> None:
    """(The Abort call and the session stream that carries the submission race.)"""
    router, engine, session = _setup()
    router.registry.connected(engine)
    assert router.abort(None, ["r1"], []) == []
    router.submit(
        session,
        wire.pb.SubmitTask(
            task_id="r1", engine_id=0, action=wire.pb.Action(pull=wire.pb.PullAction(names=["a"]))
        ),
    )
    router.submit(
        session,
        wire.pb.SubmitTask(
            task_id="r2", engine_id=0, action=wire.pb.Action(pull=wire.pb.PullAction(names=["a"]))
        ),
    )
    (result,) = _results(session)
    assert result.task_id == "r1" and result.status == wire.TASK_ABORTED
    assert [t.task_id for t in engine._tasks] == ["client1/r2"]


def test_an_announcement_that_loses_the_race_with_an_engine_replacement_fails_at_once() -> None:
    """The client sent the task to engine 0's first process, which died; a replacement took the
    id (another endpoint) before the announcement came: the replacement never got the task, so
    the controller answers it now rather than hold it there for ever."""
    router, first, session = _setup()
    _announce(router, session, "before", sent_to=FIRST_URL)
    router.engine_lost(first, "was killed by SIGKILL")
    router.registry.remove(first)
    replacement = router.registry.register(
        wire.pb.RegisterRequest(hostname="h", pid=2, requested_id=0, data_url="127.0.0.1:40002")
    )
    router.registry.connected(replacement)
    _announce(router, session, "raced", sent_to=FIRST_URL)
    _announce(router, session, "after", sent_to="127.0.0.1:40002")
    results = {r.task_id: r for r in _results(session)}
    assert sorted(results) == ["before", "raced"]
    assert results["before"].status == wire.TASK_ENGINE_DIED and "SIGKILL" in results["before"].error.evalue
    assert results["raced"].status == wire.TASK_ENGINE_DIED
    assert "replaced by a new process" in results["raced"].error.evalue
    assert replacement.announced.keys() == {"client1/after"} and "raced" not in session.tasks


def test_an_announcement_after_its_engine_was_lost_fails_the_task_with_the_death() -> None:
    """Clients announce direct tasks a few milliseconds late: the engine may be gone by then."""
    router, engine, session = _setup()
    router.engine_lost(engine, "died (connection lost)")
    _announce(router, session, "t1")
    (result,) = _results(session)
    assert result.task_id == "t1" and result.status == wire.TASK_ENGINE_DIED
    assert "engine 0" in result.error.evalue and "connection lost" in result.error.evalue
    assert session.tasks == {}


def test_a_late_announcement_fails_the_task_even_if_it_finished_before_its_engine_died() -> None:
    """A client announces only tasks it has no result for: this one's result was lost with the
    engine (and the lost engine keeps no list of finished tasks to check)."""
    router, engine, session = _setup()
    router.adopt(engine, ["client1/t1"])
    direct_finished(engine, ["client1/t1"])
    router.engine_lost(engine, "died (connection lost)")
    assert engine._direct_finished == {}
    _announce(router, session, "t1")
    (result,) = _results(session)
    assert result.task_id == "t1" and result.status == wire.TASK_ENGINE_DIED
    assert session.tasks == {}
