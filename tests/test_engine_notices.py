"""When an engine tells the controller of the tasks clients hand it directly (`DirectNotices`,
on a real event loop): a short task costs no message of its own, a long one is told of as
started and its end soon after."""

from __future__ import annotations

import asyncio

import pytest

from pxgrpc.engine.notices import NOTICE_DELAY, QUIET_NOTICE_DELAY, START_NOTICE_DELAY, DirectNotices

pytestmark = pytest.mark.timeout(30)


class Sender:
    """Stands in for the work stream's sender: records when it was woken."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.woken = asyncio.Event()
        self.at: list[float] = []
        self.notices = DirectNotices(self.loop, self.wake)

    def wake(self) -> None:
        self.at.append(self.loop.time())
        self.woken.set()

    async def next_wake(self) -> float:
        await asyncio.wait_for(self.woken.wait(), 10)
        self.woken.clear()
        return self.at[-1]


def test_a_short_direct_task_is_told_of_only_as_finished_and_not_at_once() -> None:
    async def scenario() -> None:
        sender = Sender()
        came = sender.loop.time()
        sender.notices.started(["s/1"])
        sender.notices.finished(["s/1"])
        assert not sender.notices.due
        woken = await sender.next_wake()
        assert woken >= came + QUIET_NOTICE_DELAY - 0.002 and sender.notices.due
        assert sender.notices.take() == ([], ["s/1"])
        assert not sender.notices.due

    asyncio.run(scenario())


def test_many_short_tasks_share_one_message() -> None:
    async def scenario() -> None:
        sender = Sender()
        for i in range(20):
            sender.notices.started([f"s/{i}"])
            sender.notices.finished([f"s/{i}"])
        await sender.next_wake()
        assert sender.notices.take() == ([], [f"s/{i}" for i in range(20)])
        assert len(sender.at) == 1

    asyncio.run(scenario())


def test_a_long_task_is_told_of_as_started_then_its_end_promptly() -> None:
    async def scenario() -> None:
        sender = Sender()
        came = sender.loop.time()
        sender.notices.started(["s/long"])
        woken = await sender.next_wake()
        assert woken >= came + START_NOTICE_DELAY - 0.002
        assert sender.notices.take() == (["s/long"], [])
        ended = sender.loop.time()
        sender.notices.finished(["s/long"])
        woken = await sender.next_wake()
        assert woken >= ended + NOTICE_DELAY - 0.002
        assert sender.notices.take() == ([], ["s/long"])

    asyncio.run(scenario())


def test_notices_taken_early_ride_along_and_leave_no_timer() -> None:
    async def scenario() -> None:
        sender = Sender()
        sender.notices.started(["s/a"])
        sender.notices.finished(["s/a"])
        sender.notices.started(["s/b"])
        # (Another message goes up first, e.g. a heartbeat: the notices go with it.)
        assert sender.notices.take() == (["s/b"], ["s/a"])
        await asyncio.sleep(QUIET_NOTICE_DELAY + START_NOTICE_DELAY)
        assert sender.at == []

    asyncio.run(scenario())
