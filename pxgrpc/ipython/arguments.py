"""The arguments of the px magics: `--targets`, `--signal-on-interrupt`, and the flag sets that
%%px shares with %pxconfig (where and how a cell runs) and with %pxresult (how results show)."""

from __future__ import annotations

import ast
import re
import signal
from typing import TYPE_CHECKING, Any

from IPython.core import magic_arguments
from IPython.core.error import UsageError

from pxgrpc.signals import parse_signal

if TYPE_CHECKING:
    from pxgrpc.client.client import Client
    from pxgrpc.client.targets import Targets

_SLICE = re.compile(r"\[?\s*(-?\d*)\s*:\s*(-?\d*)\s*(?::\s*(-?\d*)\s*)?\]?")
_NO_SIGNAL = {"0", "none", "no", "off"}


def parse_targets(text: str, client: Client) -> Targets:
    """`--targets` text as view targets: `all`, `3`, `0,2`, `[0, 2]`, or a slice like `::2`, `1:`."""
    text = text.strip()
    if text == "all":
        return "all"
    match = _SLICE.fullmatch(text)
    if match:
        start, stop, step = (int(part) if part else None for part in match.groups())
        return client.ids[slice(start, stop, step)]
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise UsageError(f"--targets {text!r}: give engine ids (3, or 0,2), a slice (::2) or all") from None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, int) for v in value):
        return list(value)
    raise UsageError(f"--targets {text!r}: give engine ids (3, or 0,2), a slice (::2) or all")


def parse_interrupt_signal(text: str) -> int:
    """`--signal-on-interrupt` as the signal Ctrl-C sends the engines, 0 for none.

    Names in any case, with or without SIG (`SIGTERM`, `term`), or numbers (`15`);
    `0`/`none` only stops waiting.
    """
    value = text.strip()
    if value.lower() in _NO_SIGNAL:
        return 0
    try:
        return parse_signal(value)
    except ValueError:
        raise UsageError(
            f"--signal-on-interrupt {text!r}: not a signal here; give a name (SIGINT, SIGTERM, TERM), "
            "a number (15), or 0 to only stop waiting"
        ) from None


def signal_name(signal_number: int) -> str:
    return signal.Signals(signal_number).name if signal_number else "0"


def describe_targets(targets: Any) -> str:
    if isinstance(targets, list) and len(targets) > 10:
        return f"{str(targets[:4])[:-1]}, ..., {str(targets[-4:])[1:]}"
    return str(targets)


def exec_args(f: Any) -> Any:
    """Flags that say where and how a %px cell runs (shared by %%px and %pxconfig)."""
    arguments = [
        magic_arguments.argument(
            "-b",
            "--block",
            action="store_const",
            const=True,
            dest="block",
            help="wait for the engines (default)",
        ),
        magic_arguments.argument(
            "-a",
            "--noblock",
            action="store_const",
            const=False,
            dest="block",
            help="return an AsyncResult at once",
        ),
        magic_arguments.argument(
            "--stream",
            action="store_const",
            const=True,
            dest="stream",
            help="show output as it arrives (default)",
        ),
        magic_arguments.argument(
            "--no-stream", action="store_const", const=False, dest="stream", help="show output at the end"
        ),
        magic_arguments.argument(
            "-t", "--targets", type=str, help="engines to run on: 3, 0,2, a slice like ::2, or all"
        ),
        magic_arguments.argument(
            "--verbose", action="store_const", const=True, dest="verbose", help="say where each cell runs"
        ),
        magic_arguments.argument("--no-verbose", action="store_const", const=False, dest="verbose"),
        magic_arguments.argument(
            "--progress-after",
            dest="progress_after",
            type=float,
            default=None,
            help="show a progress bar after this many seconds (0: at once, -1: never)",
        ),
        magic_arguments.argument(
            "--timeout",
            dest="timeout",
            type=float,
            default=None,
            metavar="SECONDS",
            help="stop waiting after this many seconds, interrupt the engines still running (as "
            "Ctrl-C does) and name them; they stay usable (0: no limit, the default)",
        ),
        magic_arguments.argument(
            "--signal-on-interrupt",
            dest="signal_on_interrupt",
            type=str,
            default=None,
            help="on Ctrl-C: the signal for the engines, a name or number (default SIGINT: "
            "KeyboardInterrupt; SIGTERM ends them); 0 only stops waiting",
        ),
    ]
    for argument in arguments:
        f = argument(f)
    return f


def output_args(f: Any) -> Any:
    """Flags that say how results are shown (shared by %%px and %pxresult)."""
    arguments = [
        magic_arguments.argument(
            "-r", action="store_const", dest="groupby", const="order", help="same as --group-outputs=order"
        ),
        magic_arguments.argument(
            "-e", action="store_const", dest="groupby", const="engine", help="same as --group-outputs=engine"
        ),
        magic_arguments.argument(
            "--group-outputs",
            dest="groupby",
            type=str,
            choices=["engine", "order", "type"],
            default="type",
            help="type: all stdout, then all stderr, ...; engine: each engine's output together; "
            "order: like type, with the i-th display() of every engine together",
        ),
        magic_arguments.argument(
            "-o", "--out", dest="save_name", type=str, help="keep the AsyncResult in this variable"
        ),
    ]
    for argument in arguments:
        f = argument(f)
    return f
