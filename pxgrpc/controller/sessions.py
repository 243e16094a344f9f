"""Named client sessions: kept across broken streams and controller restarts.

A client names its session (`SessionRequest.session_id`); its tasks' ids on the engines then
carry that name (`ClientSession.key`). When its stream breaks the session is *parked*: its
tasks keep running and their results wait, until the client opens a new stream with the same
name (`attach`) or `KEEP_PARKED` seconds pass. A controller restarted with `--restore` meets
results and held tasks of sessions it never saw: `named` makes a parked session for them.

A resumed client lists the tasks it still waits for; those nobody holds are answered with a
"ControllerRestarted" error (`settle`), once the engines known before a restart are back (or
the restore grace has passed), since until then one of them may still hold the task.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable

from pxgrpc import wire
from pxgrpc.controller.tasks import ClientSession

log = logging.getLogger(__name__)

#: Seconds a session whose stream broke waits for its client to come back.
KEEP_PARKED = 600.0
SESSION_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def split_key(key: str) -> tuple[str, str]:
    """(session name, task id) of a task key of a named session; ("", "") for other keys."""
    client_id, slash, task_id = key.partition("/")
    if not slash or not SESSION_ID_RE.match(client_id) or not task_id:
        return "", ""
    return client_id, task_id


def lost_result(task_id: str, url: str) -> wire.pb.TaskEvent:
    """The answer to a resumed task nobody holds."""
    now = time.time()
    evalue = (
        f"task {task_id} was lost when the controller{url} restarted (or the connection to it broke): "
        "it was queued in the controller and never reached an engine, or its result went down with "
        "the old connection; submit it again"
    )
    result = wire.pb.TaskResult(
        task_id=task_id,
        engine_id=-1,
        status=wire.TASK_ERROR,
        error=wire.pb.RemoteException(
            ename="ControllerRestarted", evalue=evalue, traceback=[f"ControllerRestarted: {evalue}"]
        ),
        submitted=now,
        completed=now,
    )
    return wire.pb.TaskEvent(result=result)


class SessionBook:
    """The named sessions of a controller, live or parked."""

    def __init__(self) -> None:
        self._by_id: dict[str, ClientSession] = {}
        self._parked_until: dict[str, float] = {}
        #: Engine ids known before a restart (`--restore`): resumes wait for them ...
        self.expected_engines: set[int] = set()
        #: ... until this time (time.monotonic()) at the latest.
        self.ready_at = 0.0
        #: How a lost task's error names the controller (" at host:port").
        self.where = ""

    def expect(self, engine_ids: Iterable[int], grace: float) -> None:
        """A restored controller: wait up to `grace` s for these engines before settling resumes."""
        self.expected_engines = set(engine_ids)
        self.ready_at = time.monotonic() + grace if self.expected_engines else 0.0

    def expects(self, engine_id: int) -> bool:
        """Whether a restored controller still waits for this engine to come back."""
        return engine_id in self.expected_engines and time.monotonic() < self.ready_at

    def get(self, client_id: str) -> ClientSession | None:
        return self._by_id.get(client_id)

    def named(self, client_id: str) -> ClientSession:
        """The session of that name; a parked one when its client has not (re)connected yet."""
        session = self._by_id.get(client_id)
        if session is None:
            session = ClientSession(f"parked {client_id}")
            session.client_id = client_id
            self._by_id[client_id] = session
            self._parked_until[client_id] = time.monotonic() + KEEP_PARKED
        return session

    def attach(self, session: ClientSession, client_id: str) -> None:
        """A stream names its session: take over what an earlier stream of it left."""
        if not SESSION_ID_RE.match(client_id):
            raise wire.DecodingError(
                f"SessionRequest.session_id: {client_id!r} is not 1-64 characters of [A-Za-z0-9_-]"
            )
        if session.client_id:
            if session.client_id != client_id:
                raise wire.DecodingError("SessionRequest.session_id: a stream cannot change its session id")
            return
        if session.tasks:
            raise wire.DecodingError("SessionRequest.session_id: must come in the first request")
        earlier = self._by_id.get(client_id)
        session.client_id = client_id
        self._by_id[client_id] = session
        self._parked_until.pop(client_id, None)
        if earlier is not None and earlier is not session:
            log.info("session %s resumed (%d tasks still held)", client_id, len(earlier.tasks))
            session.take_over(earlier)

    def resume(self, session: ClientSession, task_ids: Iterable[str]) -> None:
        """The client still waits for these tasks: those not held anywhere get an error (soon)."""
        session.awaiting |= set(task_ids) - set(session.tasks) - session.pending_results()

    def park(self, session: ClientSession) -> bool:
        """The stream of a session ended: keep it for its client, unless the client ended it.
        False: the session is over."""
        client_id = session.client_id
        if not client_id or session.ended_cleanly or self._by_id.get(client_id) is not session:
            if client_id and self._by_id.get(client_id) is session:
                del self._by_id[client_id]
            return False
        self._parked_until[client_id] = time.monotonic() + KEEP_PARKED
        log.info("session %s lost its stream: keeping it %.0f s for its client", client_id, KEEP_PARKED)
        return True

    def expired(self) -> list[ClientSession]:
        """Parked sessions whose client did not come back in time (forgotten now)."""
        now = time.monotonic()
        gone = [cid for cid, until in self._parked_until.items() if until < now]
        sessions = []
        for client_id in gone:
            del self._parked_until[client_id]
            session = self._by_id.pop(client_id, None)
            if session is not None:
                log.info("session %s: its client did not come back; dropping it", client_id)
                sessions.append(session)
        return sessions

    def settle(self, live_engine_ids: Iterable[int], held: Callable[[ClientSession, str], bool]) -> None:
        """Answer the resumed tasks nobody holds, once the engines had their chance to come back."""
        if self.expected_engines - set(live_engine_ids) and time.monotonic() < self.ready_at:
            return
        self.expected_engines = set()
        for session in list(self._by_id.values()):
            for task_id in sorted(session.awaiting):
                if not held(session, task_id):
                    log.warning("session %s: task %s was lost with the restart", session.client_id, task_id)
                    session.emit(lost_result(task_id, self.where))
            session.awaiting.clear()
