"""Signals by name or number, as users write them: `SIGTERM`, `term`, `15`, `signal.SIGTERM`."""

from __future__ import annotations

import signal


def parse_signal(value: int | str) -> signal.Signals:
    """The signal `value` names: a `signal.Signals`, a number, or a name in any case with or
    without `SIG`. ValueError naming `value` when this platform has no such signal.

    >>> parse_signal("term"), parse_signal(15)
    (<Signals.SIGTERM: 15>, <Signals.SIGTERM: 15>)
    """
    try:
        if isinstance(value, str):
            text = value.strip().upper()
            if text.isdigit():
                return signal.Signals(int(text))
            return signal.Signals[text if text.startswith("SIG") else "SIG" + text]
        return signal.Signals(value)
    except (KeyError, ValueError):
        raise ValueError(f"{value!r} is not a signal on this platform") from None
