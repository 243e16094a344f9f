"""DirectView tasks straight to their engine (`EngineData.Tasks`), one hop instead of the relay.

A relay through the controller costs about 0.43 ms per round trip, one direct hop about
0.15 ms. A client that reaches an engine's data endpoint opens one `Tasks` stream to it, on
first use, and sends DirectView tasks on it once it is connected; until then, and while it
cannot connect (the `DataPath` tries the endpoint again in the background, and a new link is
made once it answers), tasks go through the controller. The engine tells the controller about each
direct task, so queue status, abort and interrupt see it. The order of this client's tasks on
one engine is kept by the `Submitter`: a task goes direct only while none of its tasks for that
engine is in flight through the controller, and the other way round.

The client also announces each direct task on its session stream (`SubmitTask.sent_direct`), so
that the controller fails it with the reason should the engine die before telling of it. On by
default; off with `PXGRPC_DIRECT_TASKS=off` (or `PXGRPC_DATA_ENDPOINT=off`). Runs in the
transport's event loop, except `send`, which any thread may call.

An engine on this host with a task lane (`EngineInfo.lane_path`) gets its tasks on the lane
instead (`pxgrpc.client.lanelink`): a round trip without gRPC, a fraction of the cost.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TypeAlias

import grpc

from pxgrpc import blobstream, lane, wire
from pxgrpc.client.datapath import CONNECT_TIMEOUT, DataPath
from pxgrpc.client.errors import EngineError
from pxgrpc.client.lanelink import LaneLink, LinkState
from pxgrpc.client.tasks import TaskListener, TaskOutcome
from pxgrpc.loopthread import Batches, LoopThread

log = logging.getLogger(__name__)

#: Seconds the tasks of a broken direct link wait for the controller's word before they fail.
ORPHAN_GRACE = 10.0


def direct_tasks_enabled() -> bool:
    """Whether DirectView tasks may go straight to engines: yes unless `PXGRPC_DIRECT_TASKS=off`
    (or the data path is off)."""
    wanted = os.environ.get("PXGRPC_DIRECT_TASKS", "on").lower() not in ("off", "0", "no")
    return wanted and blobstream.direct_data_enabled()


class DirectLink(LinkState):
    """One `Tasks` stream to one engine."""

    def __init__(self, engine_id: int, url: str, io: LoopThread) -> None:
        super().__init__(engine_id, url, io)
        self._tasks: Batches[bytes] = Batches()

    def queue(self, task: bytes) -> bool:
        """Queue a task (a serialized `Task`) for the engine (from any thread); tasks queued
        together leave together. Returns whether the link must be woken (`wake`, in the loop)
        for it to leave."""
        return self._tasks.put(task)

    def wake(self) -> None:
        """Send what is queued (in the loop)."""
        self._tasks.wake()

    async def _requests(self) -> AsyncIterator[bytes]:
        async for tasks in self._tasks.batches():
            yield lane.repeated_one(tasks)  # (a serialized DirectTasks)

    async def run(
        self,
        datapath: DataPath,
        on_event: Callable[[wire.pb.TaskEvent, int], None],
        on_broken: Callable[[Link, str], None],
    ) -> None:
        """Connect, then read the engine's events until the stream ends or fails (each to
        `on_event(event, engine_id)`)."""
        channel = datapath.channel(self.url)
        if not await datapath.reachable(self.url):
            why = f"no connection (refused, or none within {CONNECT_TIMEOUT:.0f} s)"
            datapath.give_up(self.url, why)  # (bulk data for the engine goes through the controller too)
            self._break(on_broken, why)
            return
        rpc = channel.stream_stream(
            f"/{wire.ENGINE_DATA_SERVICE}/Tasks",
            request_serializer=None,  # (`_requests` gives them serialized)
            response_deserializer=wire.pb.DirectEvents.FromString,
        )
        call = rpc(self._requests(), metadata=datapath.metadata)
        self.ready = True
        try:
            async for message in call:
                for event in message.events:
                    on_event(event, self.engine_id)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self._break(on_broken, f"{exc.code().name}: {exc.details()}")
            return
        finally:
            call.cancel()
            self._tasks.end()  # (its requests end: else gRPC's task reading them is left pending)
        self._break(on_broken, "the engine ended the stream")

    def _break(self, on_broken: Callable[[Link, str], None], why: str) -> None:
        self.ready = False
        self.broken = True
        on_broken(self, why)


#: A way to send an engine tasks directly.
Link: TypeAlias = "DirectLink | LaneLink"


class DirectLinks:
    """This client's `Tasks` streams, one per engine, opened on first use (in the I/O thread)."""

    def __init__(
        self,
        io: LoopThread,
        datapath: DataPath,
        on_event: Callable[[wire.pb.TaskEvent, int], None],
        on_broken: Callable[[Link, str], None],
    ) -> None:
        self._io = io
        self._datapath = datapath
        #: What the links' events go to: `on_event(event, engine_id)`.
        self.on_event = on_event
        #: What hears of a link that broke: `on_broken(link, why)`.
        self.on_broken = on_broken
        self._links: dict[int, Link] = {}
        self._lock = threading.Lock()
        self._runners: list[asyncio.Future[None]] = []
        self.enabled = direct_tasks_enabled()

    def usable(self, engine_id: int | None) -> Link | None:
        """The engine's link when tasks may go on it now (from any thread); else None, and a
        link is opened in the background when the engine has a reachable data endpoint."""
        if not self.enabled or engine_id is None:
            return None
        link = self._links.get(engine_id)
        if link is not None and link.ready:
            return link
        if link is None:
            url = self._datapath.url_for(engine_id)
            if url is not None:
                path = self._datapath.lane_for(engine_id)
                with self._lock:  # (the I/O thread opens lanes too: `prepare`)
                    if engine_id in self._links:
                        return None
                    link = LaneLink(engine_id, url, path, self._io) if path else None
                    link = self._links[engine_id] = link or DirectLink(engine_id, url, self._io)
                    link.revival = self._datapath.revivals(url)
                self._io.call_soon(self._start, link)
        elif link.broken:
            url = self._datapath.url_for(engine_id)
            if url is not None and (url != link.url or self._datapath.revivals(url) != link.revival):
                del self._links[engine_id]  # a new engine under that id, or its endpoint is back
        return None

    def all_usable(self, engine_ids: Sequence[int | None]) -> list[Link] | None:
        """The links of these engines if tasks may go on every one now, else None (`usable`)."""
        links = self._links
        ready = [links[e] for e in engine_ids if e in links and links[e].ready]
        if len(ready) == len(engine_ids):
            return ready
        usable = [self.usable(engine_id) for engine_id in engine_ids]
        return None if None in usable else usable  # type: ignore[return-value]

    def prepare(self, engine_ids: tuple[int, ...]) -> None:
        """Open the task lanes of these engines that have one, now (from any thread): a lane
        costs little to hold, and so the first task on it is as quick as later ones."""
        if not self.enabled:
            return
        for engine_id in engine_ids:
            if engine_id not in self._links and self._datapath.lane_for(engine_id):
                self.usable(engine_id)

    def _start(self, link: Link) -> None:
        runner = asyncio.ensure_future(self._run(link))
        self._runners.append(runner)

    async def _run(self, link: Link) -> None:
        await link.run(self._datapath, self.on_event, self.on_broken)
        if isinstance(link, LaneLink) and link.unreachable and self._links.get(link.engine_id) is link:
            stream = self._links[link.engine_id] = DirectLink(link.engine_id, link.url, self._io)
            stream.revival = link.revival
            await stream.run(self._datapath, self.on_event, self.on_broken)

    async def close(self) -> None:
        for runner in self._runners:
            runner.cancel()
        await asyncio.gather(*self._runners, return_exceptions=True)
        self._runners.clear()


def fail_later(
    io: LoopThread,
    task_ids: list[str],
    engine_id: int,
    why: str,
    finish: Callable[[str], TaskListener | None],
) -> None:
    """Direct tasks on an engine that may never answer them: the engine may have died (the
    controller then answers the tasks it heard of, saying how) or only the link may be gone
    (the engine then sends their results through the controller). Those still unanswered after
    ORPHAN_GRACE seconds (the engine died before the controller heard of them) fail."""
    error = EngineError(
        f"engine {engine_id}: {why}, and the controller did not report the end of this task "
        "sent to it directly: the engine died or is unreachable",
        engine_id,
    )

    def fail() -> None:
        for task_id in task_ids:
            listener = finish(task_id)
            if listener is not None:
                listener.on_result(TaskOutcome(task_id, engine_id, "engine_died", error=error))

    io.loop.call_later(ORPHAN_GRACE, fail)
