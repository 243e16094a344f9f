"""How a blocking %px / %%px cell waits for its engines and shows what they did.

Output is shown as it arrives (or all at the end without streaming), a progress bar appears once
the cell is slow, `--timeout` interrupts the engines, and Ctrl-C signals them and stops waiting.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

from pxgrpc.client.errors import AlreadyDisplayedError, CompositeError, RemoteError
from pxgrpc.client.errors import TimeoutError as PxTimeoutError
from pxgrpc.ipython.arguments import signal_name
from pxgrpc.ipython.display import LiveOutput, display_outputs, show_results
from pxgrpc.ipython.progress import progress_bar

if TYPE_CHECKING:
    from pxgrpc.client.asyncresult import AsyncResult

#: How often a blocking %%px wakes up to update the progress bar.
POLL_SECONDS = 0.1
#: After signalling the engines, how long to wait for their reports (KeyboardInterrupt, or
#: EngineError when the signal ended them).
INTERRUPT_GRACE_SECONDS = 2.0


class _CellTimedOut(Exception):
    """A blocking %%px cell ran past its --timeout."""


def _timeout_error(engines: list[int], timeout: float, signal_number: int) -> PxTimeoutError:
    how = "interrupted" if signal_number == signal.SIGINT else f"sent {signal_name(signal_number)}"
    which = f"engine(s) {engines}" if engines else "the engines (not started yet)"
    return PxTimeoutError(
        f"%px: {which} did not finish within --timeout {timeout:g} s; their work was {how} and "
        "the engines stay usable (%pxresult shows what they returned)"
    )


def wait_and_show(
    ar: AsyncResult,
    groupby: str,
    stream: bool,
    progress_after: float,
    signal_number: int,
    timeout: float = 0.0,
) -> None:
    """Wait for a blocking cell's `ar` and show its outputs; raise its error (once shown).

    `signal_number` goes to the engines on Ctrl-C (0: none) and at `timeout` seconds (SIGINT
    if 0); `progress_after` seconds in, a progress bar appears (-1: never).
    """
    live = LiveOutput(ar) if stream else None
    interrupted = False
    timed_out: list[int] | None = None
    try:
        # Without streaming, nothing but the outputs at the end: no progress bar either.
        _wait(ar, live, progress_after if stream else -1, timeout)
    except _CellTimedOut:
        timed_out = ar.interrupt(signal_number or signal.SIGINT)
        ar.wait(INTERRUPT_GRACE_SECONDS)
    except KeyboardInterrupt:
        interrupted = True
        _stop_on_interrupt(ar, signal_number)
    finally:
        if live is not None:
            live.close()
    if live is not None:
        show_results(ar, live.printer)
    else:
        display_outputs(ar, groupby)
    if timed_out is not None:
        raise _timeout_error(timed_out, timeout, signal_number or signal.SIGINT)
    error = ar.exception() if ar.done() and not ar.cancelled() else None
    if error is None:
        return
    if interrupted:
        _print_errors(error)  # what the engines said to the signal; no traceback here
        return
    if live is not None and isinstance(error, CompositeError):
        _print_errors(error)
        raise AlreadyDisplayedError(error)
    raise error


def _wait(ar: AsyncResult, live: LiveOutput | None, progress_after: float, timeout: float = 0.0) -> None:
    started = time.monotonic()
    bar = None
    try:
        while not ar.done():
            if timeout > 0 and time.monotonic() - started >= timeout:
                raise _CellTimedOut
            if live is None:
                ar.wait(POLL_SECONDS)
            elif live.wait(POLL_SECONDS):
                with _bar_hidden(bar):
                    live.show_new()
            late = time.monotonic() - started >= progress_after
            if bar is None and progress_after >= 0 and late and not ar.done():
                bar = progress_bar(total=len(ar), desc="%px")
            if bar is not None and ar.progress != bar.n:
                bar.update(ar.progress - bar.n)
    finally:
        if bar is not None:
            bar.update(ar.progress - bar.n)
            bar.close()


def _stop_on_interrupt(ar: AsyncResult, signal_number: int) -> None:
    """Ctrl-C while a blocking %%px waits: signal the cell's engines (unless 0) and stop waiting."""
    if not signal_number:
        print(
            "Received Keyboard Interrupt. Not signalling the engines (--signal-on-interrupt 0): "
            "they go on, and %pxresult shows their results.",
            file=sys.stderr,
        )
        return
    name = signal_name(signal_number)
    print(f"Received Keyboard Interrupt. Sending signal {name} to engines...", file=sys.stderr)
    ar.interrupt(signal_number)
    ar.wait(INTERRUPT_GRACE_SECONDS)


def _print_errors(error: BaseException) -> None:
    """Each engine's error on stderr: the first `CompositeError.tb_limit` with their remote
    tracebacks, the others in one line each."""
    errors = list(getattr(error, "elist", [error]))
    limit = getattr(CompositeError, "tb_limit", 4)
    for i, err in enumerate(errors):
        if i < limit and isinstance(err, RemoteError):
            print("\n".join(err.render_traceback()), file=sys.stderr)
        else:
            print(f"{type(err).__name__}: {err}", file=sys.stderr)


def _bar_hidden(bar: Any) -> contextlib.AbstractContextManager[Any]:
    """While printing, take a text progress bar off the screen (and put it back after)."""
    if bar is None or not hasattr(bar, "external_write_mode"):
        return contextlib.nullcontext()
    return type(bar).external_write_mode(file=sys.stdout)  # type: ignore[no-any-return]
