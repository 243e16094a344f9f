"""The loop thread's Wakeup: asyncio.Event's meaning, with a timeout, in one loop step."""

from __future__ import annotations

import asyncio

import pytest

from pxgrpc.loopthread import Wakeup

pytestmark = pytest.mark.timeout(30)


def test_wakeup_set_before_wait_returns_at_once() -> None:
    async def main() -> bool:
        wakeup = Wakeup()
        wakeup.set()
        return await wakeup.wait(0.01)

    assert asyncio.run(main()) is True


def test_wakeup_times_out_unset_and_cleared_stays_unset() -> None:
    async def main() -> tuple[bool, bool]:
        wakeup = Wakeup()
        wakeup.set()
        wakeup.clear()
        return await wakeup.wait(0.01), wakeup.is_set()

    assert asyncio.run(main()) == (False, False)


def test_wakeup_set_by_another_callback_wakes_the_waiter() -> None:
    async def main() -> bool:
        loop = asyncio.get_running_loop()
        wakeup = Wakeup()
        loop.call_later(0.01, wakeup.set)
        woken = await wakeup.wait(10)
        # A second wait after the first is answered: set still holds until cleared.
        again = await wakeup.wait()
        return woken and again

    assert asyncio.run(main()) is True


def test_wakeup_waiter_cancelled_cleanly() -> None:
    async def main() -> bool:
        wakeup = Wakeup()
        task = asyncio.ensure_future(wakeup.wait())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        wakeup.set()  # no waiter left: nothing to resolve
        return await wakeup.wait(0.01)

    assert asyncio.run(main()) is True
