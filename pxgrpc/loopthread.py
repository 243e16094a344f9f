"""An asyncio event loop in a background thread: the I/O thread of a client or an engine.

gRPC's asyncio API wants one loop; the user's code (or the engine's task runner) wants the main
thread. `LoopThread` runs the loop in a daemon thread and is the one way other threads hand it
work: `run` (wait for a coroutine's result), `submit` (a future for it), `call_soon` (a plain
callback). `background` keeps the loop's own fire-and-forget tasks alive until they end.

>>> io = LoopThread("pxgrpc-client-io")
>>> io.start()
>>> io.run(asyncio.sleep(0, "done"), timeout=5)
'done'
>>> io.stop()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class Wakeup:
    """A flag one coroutine waits on, with a timeout: asyncio.Event's `set`/`clear`/`wait`, but the
    waiter resumes one loop step after `set` (`asyncio.wait_for` on an Event makes a task per
    wait and takes three steps). Use in the loop's thread only."""

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._set = True
        if self._waiter is not None:
            _resolve(self._waiter)

    def clear(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until set, or for `timeout` seconds; whether it is set."""
        if self._set:
            return True
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = None if timeout is None else loop.call_later(timeout, _resolve, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()
        return self._set


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Batches(Generic[T]):
    """Items put from any thread and taken in the loop a batch at a time: what was put between
    two takes leaves together. `put` says whether the taker must be woken (`wake`, in the loop),
    so that a burst of puts costs one wake-up."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[T] = []
        self._wake_pending = False
        self._wakeup = Wakeup()
        self._ended = False

    def put(self, item: T) -> bool:
        """Queue an item (from any thread); whether `wake` must follow for it to be taken."""
        with self._lock:
            self._items.append(item)
            if self._wake_pending:
                return False
            self._wake_pending = True
            return True

    def take_all(self) -> list[T]:
        """The items not taken yet (from any thread)."""
        with self._lock:
            items, self._items = self._items, []
        return items

    def wake(self) -> None:
        """(In the loop.) Let `batches` take what was put."""
        self._wakeup.set()

    def end(self) -> None:
        """(In the loop.) End `batches`."""
        self._ended = True
        self._wakeup.set()

    async def batches(self) -> AsyncIterator[list[T]]:
        """What was put, a batch at a time, until `end`."""
        while not self._ended:
            with self._lock:
                items, self._items = self._items, []
                self._wake_pending = False
                if not items:
                    self._wakeup.clear()
            if items:
                yield items
            else:
                await self._wakeup.wait()


class LoopClosed(RuntimeError):
    """Work was handed to a loop thread that has stopped."""


class LoopThread:
    """An asyncio loop running in its own daemon thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._main: Coroutine[Any, Any, None] | None = None
        self._on_exit: Callable[[BaseException | None], None] | None = None
        self._tasks: set[asyncio.Future[Any]] = set()

    def start(
        self,
        main: Coroutine[Any, Any, None] | None = None,
        on_exit: Callable[[BaseException | None], None] | None = None,
    ) -> None:
        """Start the thread: it runs `main` to its end (then calls `on_exit` with its error, or
        None), or with no `main` runs until `stop`."""
        self._main, self._on_exit = main, on_exit
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        if self._main is None:
            self.loop.run_forever()
            return
        failure: BaseException | None = None
        try:
            self.loop.run_until_complete(self._main)
        except BaseException as exc:  # noqa: BLE001 - handed to on_exit, which reports it
            failure = exc
        finally:
            if self._on_exit is not None:
                self._on_exit(failure)

    # --- from any thread --------------------------------------------------------------------

    def in_loop(self) -> bool:
        """Whether the caller runs in this loop's thread."""
        return threading.get_ident() == self._thread.ident

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run `coro` in the loop; a future for its result."""
        if self.loop.is_closed():
            coro.close()
            raise LoopClosed("the I/O thread has stopped")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coro` in the loop and wait for its result (concurrent.futures.TimeoutError after
        `timeout` seconds, with the coroutine cancelled)."""
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def call_soon(self, callback: Callable[..., object], *args: Any) -> None:
        """Call `callback(*args)` in the loop's thread, soon."""
        self.loop.call_soon_threadsafe(callback, *args)

    def call_later(self, delay: float, callback: Callable[[], object]) -> None:
        """Call `callback()` in the loop's thread after `delay` seconds."""
        self.loop.call_soon_threadsafe(self.loop.call_later, delay, callback)

    def stop(self, last: Coroutine[Any, Any, None] | None = None, timeout: float = 5.0) -> None:
        """Run `last` (a clean-up) in the loop, then stop and close it (a loop started without
        `main`); idempotent."""
        if self.loop.is_closed():
            if last is not None:
                last.close()
            return
        if self._thread.is_alive():
            if last is not None:
                try:
                    self.run(last, timeout)
                except (concurrent.futures.TimeoutError, RuntimeError):
                    log.warning("%s: closing took too long", self._thread.name)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
        elif last is not None:
            last.close()
        if not self.loop.is_running():
            self.loop.close()

    # --- in the loop's thread ---------------------------------------------------------------

    def background(self, coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        """Run `coro` as a task, holding a reference until it is done (asyncio keeps only weak
        ones). Call in the loop's thread."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
