"""Submitting tasks: the part of the client's `Transport` that sends work to the controller.

Submits are queued and leave in batches, everything queued since the last request in one
`SessionRequest` on the session stream. A task's large arguments travel as a blob: straight to
its engine when the engine's data endpoint is reachable (the data path), else uploaded to the
controller (a relay). A blob for several engines (a broadcast) is always relayed: uploaded
once, whatever the number of engines. A submit whose blob goes to the engine is held back (and so are the ones
after it, to keep the order) until its upload is done: the upload is the submit's *gate*.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import itertools
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import TYPE_CHECKING

import grpc

from pxgrpc import blobstream, wire
from pxgrpc.client.datapath import CONNECT_TIMEOUT, DataPath, write_shared
from pxgrpc.client.directlinks import DirectLinks, Link
from pxgrpc.client.encoding import address, encode_action
from pxgrpc.client.inflight import InFlight
from pxgrpc.client.lanelink import LaneLink, SharedFiles
from pxgrpc.client.ordering import EngineOrder
from pxgrpc.client.tasks import Action, TaskListener
from pxgrpc.loopthread import LoopThread

if TYPE_CHECKING:
    from pxgrpc.client.calls import ControllerCalls

log = logging.getLogger(__name__)

_task_counter = itertools.count()

#: Seconds after sending that the client tells the controller of its direct tasks still running
#: (sooner than their engine does, `pxgrpc.engine.notices.START_NOTICE_DELAY`: until one of them
#: tells, an engine's death fails the task only with the controller's account if it knows of it).
ANNOUNCE_DELAY = 0.005


class Submitter:
    """The queue of submits for the session stream, the gates that hold them back, and the
    uploads of their blobs (to the engines' data endpoints, or relayed by the controller)."""

    def __init__(
        self,
        io: LoopThread,
        calls: ControllerCalls,
        datapath: DataPath,
        in_flight: InFlight,
        links: DirectLinks,
        session_id: str,
    ) -> None:
        self._io = io
        self._links = links
        self._session_id = session_id
        #: The order of this client's tasks on one engine, whichever path they take.
        self.order = EngineOrder()
        #: The files of values sent on task lanes as shared memory.
        self.shared_files = SharedFiles()
        self._calls = calls
        self._datapath = datapath
        self._in_flight = in_flight
        self._prefix = f"{os.getpid():x}-{id(self):x}-"
        self._lock = threading.Lock()
        self._outgoing: list[wire.pb.SubmitTask] = []
        # Submits that must wait (in order) until their blob is on the engine: (submit, upload).
        self._gates: collections.deque[tuple[wire.pb.SubmitTask, concurrent.futures.Future[None]]] = (
            collections.deque()
        )
        self._relayed: set[str] = set()
        # The tasks a session stream took and whose result has not come: what a resumed session
        # asks the controller for. Those still queued here are not in it: they go on the new
        # stream (a resume naming them would have them answered as lost before they arrive).
        self._sent: set[str] = set()
        self._flush_scheduled = False
        # Direct tasks to announce (task id, link), at the latest ANNOUNCE_DELAY s after sending.
        self._unannounced: list[tuple[str, Link]] = []
        self._announce_scheduled = False
        # Notified (with _lock held) whenever the session takes submits from _outgoing.
        self._taken = threading.Condition(self._lock)
        self._wakeup = asyncio.Event()
        # Grows with every new session stream (and at close): older `requests()` stop.
        self._stream_number = 0

    def new_task_ids(self, n: int) -> list[str]:
        """Fresh task ids (listeners are built with them before the tasks are submitted)."""
        return [f"{self._prefix}{next(_task_counter)}" for _ in range(n)]

    def submit(
        self,
        task_ids: Sequence[str],
        action: Action,
        targets: Sequence[int | None],
        listener: TaskListener,
        retries: int = 0,
        encoding: wire.pb.ResultEncoding.ValueType = wire.ENCODING_PICKLE,
    ) -> None:
        """Run `action` on each target (None: load-balanced) as the tasks `task_ids`."""
        template = wire.pb.SubmitTask(encoding=encoding, retries=retries)
        blob = encode_action(action, template.action)
        if self._links.enabled:
            if blob is None and self._send_direct(task_ids, template, targets, listener):
                return
            if blob is not None and self._send_shared(task_ids, template, targets, listener, blob):
                return
        submits = []
        for task_id, target in zip(task_ids, targets, strict=True):
            submit = wire.pb.SubmitTask()
            submit.CopyFrom(template)
            submits.append(address(submit, task_id, target))
        # One blob for every target. For one engine it goes straight there when the engine can
        # take it; for several it goes up once, to the controller, which passes it on (and
        # shares one copy among the engines on its host): the client's cost does not grow with
        # the number of engines.
        to_engines = blob is not None and len(set(targets)) == 1 and bool(self._datapath.url_for(targets[0]))
        uploaded: concurrent.futures.Future[None] | None = None
        if blob is not None and not to_engines:
            # Before queueing: the loop thread may send the submits the moment they are queued.
            for submit in submits:
                submit.blob_ids.append(blob.blob_id)
            if all(self._datapath.on_this_host(t) for t in targets):
                # Sent once uploaded: the tasks then carry the shared copy (`Task.shared_blobs`).
                uploaded = concurrent.futures.Future()
                uploaded.add_done_callback(self._gate_opened)
        self._enqueue(task_ids, submits, [blob if to_engines else None] * len(submits), listener, uploaded)
        if blob is not None and not to_engines:
            self._start_relay(blob, uploaded)

    def submit_each(
        self,
        task_ids: Sequence[str],
        items: Iterable[tuple[Action, int | None]],
        listener: TaskListener,
        retries: int = 0,
    ) -> None:
        """Run a different action on each target (scatter, map) as the tasks `task_ids`
        (`items` may be a generator, to build each action only when it is its turn).

        Small tasks are queued together; a task with a large payload is queued as soon as it
        is encoded, so that its upload (and its engine) starts while the next one is encoded.
        Encoding (pickling) holds the GIL, which the upload and the session also need now and
        then: so before encoding the next payload, this waits until the task is on its way (its
        upload to its engine done, its submit taken by the session), for at most twice as long as
        encoding its payload took. The engine then starts on it while the next one is encoded.
        """
        cache: dict[int, wire.pb.Value] = {}
        ids: list[str] = []
        submits: list[wire.pb.SubmitTask] = []
        engine_blobs: list[blobstream.OutgoingBlob | None] = []
        relayed = []
        # Engines with a task of this call relayed: later ones for them are too (in order).
        relayed_to: set[int | None] = {None}
        for i, (task_id, (action, target)) in enumerate(zip(task_ids, items, strict=True)):
            began = time.perf_counter()
            submit = address(wire.pb.SubmitTask(retries=retries), task_id, target)
            blob = encode_action(action, submit.action, cache)
            if (
                blob is None
                and target not in relayed_to
                and self._links.enabled
                and self._send_direct([task_id], submit, [target], listener)
            ):
                continue
            relayed_to.add(target)
            ids.append(task_id)
            submits.append(submit)
            if blob is not None and not self._datapath.url_for(target):
                submit.blob_ids.append(blob.blob_id)
                relayed.append(blob)
                engine_blobs.append(None)
            else:
                engine_blobs.append(blob)
            if blob is not None and i + 1 < len(task_ids):
                gates = self._enqueue(ids, submits, engine_blobs, listener)
                for blob in relayed:
                    self._start_relay(blob)
                self._wait_sent(gates, submits, time.perf_counter() + 2 * (time.perf_counter() - began))
                ids, submits, engine_blobs, relayed = [], [], [], []
        if ids:
            self._enqueue(ids, submits, engine_blobs, listener)
        for blob in relayed:
            self._start_relay(blob)

    def _send_shared(
        self,
        task_ids: Sequence[str],
        template: wire.pb.SubmitTask,
        targets: Sequence[int | None],
        listener: TaskListener,
        blob: blobstream.OutgoingBlob,
    ) -> bool:
        """Send tasks with a large value (a push, an apply's big argument) on the task lanes of
        their engines, when each has one and maps this process's files: the value is written
        once into a memfd of ours, which every engine maps privately (copy-on-write), whatever
        their number, and which stays open until the last task has its result. Else False."""
        links = self._links.all_usable(targets)
        if links is None or not all(isinstance(link, LaneLink) and link.shares_memory for link in links):
            return False
        try:
            shared = write_shared(blob)
        except OSError as exc:  # (e.g. no memory for the file)
            log.warning("no shared copy of blob %s (%s): sending it otherwise", blob.blob_id, exc)
            return False
        header = wire.pb.BlobHeader(blob_id=blob.blob_id, size=blob.size, shared=shared.describe())
        self.shared_files.hold(shared, task_ids)
        if self._send_direct(task_ids, template, targets, listener, header):
            return True
        for task_id in task_ids:
            self.shared_files.done(task_id)
        return False

    def _send_direct(
        self,
        task_ids: Sequence[str],
        template: wire.pb.SubmitTask,
        targets: Sequence[int | None],
        listener: TaskListener,
        shared: wire.pb.BlobHeader | None = None,
    ) -> bool:
        """Send tasks straight to their engines, if every one's link is up and none of this
        client's tasks for those engines is in flight through the controller; else False.
        `shared`: a blob of the action, in a file of ours the engines map."""
        links = self._links.all_usable(targets)
        if links is None:
            return False
        if not self.order.go_direct(task_ids, [link.engine_id for link in links]):
            return False
        try:
            urls = {t: link.url for t, link in zip(task_ids, links, strict=True)}
            self._in_flight.add(task_ids, listener, urls)
        except BaseException:
            for task_id in task_ids:
                self.order.done(task_id)
            raise
        # What every task has in common is serialized once; each task is its id, then that
        # (a message's fields may come in any order).
        common = wire.pb.Task(
            action=template.action, encoding=template.encoding, direct_results=True, submitted=time.time()
        )
        if shared is not None:
            common.shared_blobs.append(shared)
        tail = common.SerializeToString()
        prefix = f"{self._session_id}/"
        woken: list[Link] = []
        for task_id, link in zip(task_ids, links, strict=True):
            if link.queue(wire.pb.Task(task_id=prefix + task_id).SerializeToString() + tail):
                woken.append(link)
        with self._lock:
            self._unannounced.extend(zip(task_ids, links, strict=True))
            announce = not self._announce_scheduled
            self._announce_scheduled = True
        if woken or announce:  # (a task lane's tasks are sent already: no wake-up for them)
            self._io.call_soon(self._send_queued, woken, announce)
        return True

    def _send_queued(self, links: list[Link], announce: bool) -> None:
        """(In the I/O thread.) Wake the links that have tasks to send; `announce`: the tasks
        will be announced in ANNOUNCE_DELAY seconds."""
        for link in links:
            link.wake()
        if announce:
            self._io.loop.call_later(ANNOUNCE_DELAY, self._announce)

    def unannounced(self, engine_ids: Sequence[int]) -> list[str]:
        """The direct tasks sent to these engines that the controller has not been told of yet
        (an abort of all queued tasks of the engines names them: see `TaskRouter.abort`)."""
        wanted = set(engine_ids)
        with self._lock:
            return [task_id for task_id, link in self._unannounced if link.engine_id in wanted]

    def _announce(self) -> None:
        """(In the I/O thread.) Tell the controller (on the session stream) of the direct tasks
        still running, so that it fails them with its reason should an engine die before it
        could tell of them itself (`SubmitTask.sent_direct`). A few milliseconds late: most
        tasks have their result by then, and neither their round trip nor the controller spends
        anything on the news (a late one for an engine lost meanwhile still fails its task)."""
        with self._lock:
            sent, self._unannounced = self._unannounced, []
            self._announce_scheduled = False
            running = [
                wire.pb.SubmitTask(
                    task_id=task_id, engine_id=link.engine_id, sent_direct=True, sent_to=link.url
                )
                for task_id, link in sent
                if self._in_flight.listener(task_id) is not None  # (no result yet)
            ]
            if not running:
                return
            self._outgoing.extend(running)
            flush = not self._flush_scheduled
            self._flush_scheduled = True
        if flush:
            self._wakeup.set()

    def task_done(self, task_id: str) -> None:
        """A task's result came (either path): relayed submits held for its engine may go."""
        with self._lock:
            self._sent.discard(task_id)
        self.order.done(task_id)
        self.shared_files.done(task_id)

    def sent_unanswered(self) -> list[str]:
        """The tasks an earlier session stream took (relayed through the controller) whose
        result has not come: a new stream resumes these. Not the tasks sent straight to their
        engines (their results come on their own streams), nor those still queued here."""
        with self._lock:
            return list(self._sent)

    def _enqueue(
        self,
        ids: Sequence[str],
        submits: list[wire.pb.SubmitTask],
        engine_blobs: list[blobstream.OutgoingBlob | None],
        listener: TaskListener,
        uploaded: concurrent.futures.Future[None] | None = None,
    ) -> list[concurrent.futures.Future[None]]:
        """Queue submits for the session stream. A submit with a blob for its engine waits (and
        so do the ones after it) until the blob is there; tasks on an engine with a reachable
        data endpoint fetch their result blobs from it. Returns the uploads to the engines."""
        gates = []
        result_urls = {}
        uploads: dict[int, concurrent.futures.Future[None]] = {}
        # (the submit, its blob for the engine, the engine's data endpoint)
        to_engines: list[tuple[wire.pb.SubmitTask, blobstream.OutgoingBlob | None, str]] = []
        for submit, blob in zip(submits, engine_blobs, strict=True):
            url = self._datapath.url_for(submit.engine_id) if not submit.load_balanced else None
            if url is None:
                continue
            submit.direct_results = True
            result_urls[submit.task_id] = url
            # Results wait on the engine only if this client can fetch them there: a submit to
            # an endpoint not connected yet waits until it is (or is found unreachable).
            if blob is not None or not self._datapath.connected(url):
                to_engines.append((submit, blob, url))
        self._in_flight.add(ids, listener, result_urls)
        for submit, blob, url in to_engines:  # (after `add`: a fallback takes back a result url)
            gate = self._io.submit(self._send_to_engine(submit, blob, url))
            gate.add_done_callback(self._gate_opened)
            uploads[id(submit)] = gate
            gates.append(gate)
        with self._lock:
            if uploaded is not None and submits:
                self._gates.append((submits[0], uploaded))
            for submit in submits:
                if id(submit) in uploads:
                    self._gates.append((submit, uploads[id(submit)]))
                if not submit.load_balanced:
                    drain = self.order.relayed(submit.task_id, submit.engine_id)
                    if drain is not None:
                        drain.add_done_callback(self._gate_opened)
                        self._gates.append((submit, drain))
            self._outgoing.extend(submits)
            schedule = not self._flush_scheduled
            self._flush_scheduled = True
        if schedule:
            self._io.call_soon(self._wakeup.set)
        return gates

    def _wait_sent(
        self,
        gates: list[concurrent.futures.Future[None]],
        submits: list[wire.pb.SubmitTask],
        deadline: float,
    ) -> None:
        """Wait until these uploads are done and these submits taken by the session, or the deadline."""
        concurrent.futures.wait(gates, timeout=max(0.0, deadline - time.perf_counter()))
        with self._taken:
            self._taken.wait_for(
                lambda: not any(queued is submit for queued in self._outgoing for submit in submits),
                timeout=max(0.0, deadline - time.perf_counter()),
            )

    def _gate_opened(self, gate: concurrent.futures.Future[None]) -> None:
        """An upload to an engine is over: the submits held behind it may go."""
        self._io.call_soon(self._wakeup.set)

    async def _send_to_engine(
        self, submit: wire.pb.SubmitTask, blob: blobstream.OutgoingBlob | None, url: str
    ) -> None:
        """Make sure the engine's data endpoint can be reached and upload the task's blob (if
        any) there; else the task's blob and results go through the controller, and so does
        everything for that engine from now on."""
        if not await self._datapath.reachable(url):
            why = f"no connection (refused, or none within {CONNECT_TIMEOUT:.0f} s)"
        else:
            if blob is None:
                return
            try:
                await self._datapath.upload(url, blob)
                return
            except grpc.RpcError as exc:
                why = f"{exc.code().name}: {exc.details()}"
        self._datapath.give_up(url, why)
        submit.direct_results = False
        self._in_flight.drop_url(submit.task_id)
        if blob is not None:
            submit.blob_ids.append(blob.blob_id)
            self._start_relay(blob)

    def _start_relay(
        self, blob: blobstream.OutgoingBlob, done: concurrent.futures.Future[None] | None = None
    ) -> None:
        """Upload a blob to the controller (once), from any thread; `done` resolves when it is
        over (failed or not: the controller answers the tasks), or is on its way already."""
        if not self._io.in_loop():
            self._io.call_soon(self._start_relay, blob, done)
        elif blob.blob_id not in self._relayed:
            self._relayed.add(blob.blob_id)
            task = self._io.background(self._upload(blob))
            task.add_done_callback(lambda _: self._relay_over(blob.blob_id, done))
        elif done is not None:
            done.set_result(None)

    def _relay_over(self, blob_id: str, done: concurrent.futures.Future[None] | None) -> None:
        self._relayed.discard(blob_id)
        if done is not None:
            done.set_result(None)

    async def _upload(self, blob: blobstream.OutgoingBlob) -> None:
        try:
            await self._calls.upload(blob)
        except grpc.RpcError as exc:
            log.error("upload of %d bytes failed: %s", blob.size, exc.details())

    # --- the session stream's side ----------------------------------------------------------

    async def requests(self, first: wire.pb.SessionRequest) -> AsyncIterator[wire.pb.SessionRequest]:
        """The requests of a new session stream: `first` (the session's name, and what it still
        waits for), then everything submitted since the last one, in one message. Ends (the
        client half-closes the stream) at `finish()` or when a newer stream starts."""
        self._stream_number += 1
        number = self._stream_number
        yield first
        while number == self._stream_number:
            with self._lock:
                tasks = self._take_ready()
            if tasks:
                yield wire.pb.SessionRequest(tasks=tasks)
                continue
            self._wakeup.clear()
            await self._wakeup.wait()

    def finish(self) -> None:
        """End the current session stream's requests (in the I/O thread)."""
        self._stream_number += 1
        self._wakeup.set()

    def _take_ready(self) -> list[wire.pb.SubmitTask]:
        """(With the lock held.) The submits that may go: all of them, up to the first one whose
        blob is still on its way to the engine (order of submission is kept)."""
        self._flush_scheduled = False
        gates = self._gates
        while gates and gates[0][1].done():
            gates.popleft()
        if not gates:
            tasks, self._outgoing = self._outgoing, []
        else:
            blocked = gates[0][0]
            cut = next(i for i, submit in enumerate(self._outgoing) if submit is blocked)
            tasks, self._outgoing = self._outgoing[:cut], self._outgoing[cut:]
        if tasks:
            self._sent.update(submit.task_id for submit in tasks if not submit.sent_direct)
            self._taken.notify_all()
        return tasks
