"""IPython magics: `%px`, `%%px`, `%autopx`, `%pxresult` and `%pxconfig`.

They are registered as soon as a `pxgrpc.Client` is created inside IPython or Jupyter, as in
ipyparallel::

    import pxgrpc as ipp
    rc = ipp.Client()

    %%px                          # runs on every engine, shows [stdout:N] and Out[N:n]
    import os
    os.getpid()

also by `%load_ext pxgrpc` (connects to the local cluster on first use), and for several
views at once by `view.activate(suffix)` (`rc[::2].activate("_even")` gives `%px_even`, ...).

While a blocking `%%px` cell runs, the engines' output is shown as it arrives; interrupting the
kernel (Ctrl-C, Jupyter's stop button) interrupts the engines' code, which raises
KeyboardInterrupt there, and stops waiting (printing `Received Keyboard Interrupt. Sending signal
SIGINT to engines...` and what the engines answered, without a local traceback).
`--signal-on-interrupt SIGTERM` (any signal name or number) sends the engines that signal
instead, and `--signal-on-interrupt 0` none (the cell only stops waiting).

With streaming (the default), errors on several engines are printed as they are shown, and the
cell ends with `AlreadyDisplayedError` ("7 errors") rather than showing them twice.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any

from IPython.core import magic_arguments
from IPython.core.error import UsageError
from IPython.core.magic import Magics, magics_class, no_var_expand

from pxgrpc.ipython.arguments import (
    describe_targets,
    exec_args,
    output_args,
    parse_interrupt_signal,
    parse_targets,
    signal_name,
)
from pxgrpc.ipython.cellwait import wait_and_show
from pxgrpc.ipython.display import display_outputs

if TYPE_CHECKING:
    from pxgrpc.client.asyncresult import AsyncResult
    from pxgrpc.client.view import DirectView, Targets


class _AutopxTransform:
    """An input transformer that turns every cell into a %%px cell while %autopx is on."""

    #: Keeps IPython from applying it when it only checks whether input is complete.
    has_side_effects = True

    def __init__(self, magics: ParallelMagics) -> None:
        self.magics = magics

    def __call__(self, lines: list[str]) -> list[str]:
        if self.magics.running_locally:
            return lines
        first = next((line.strip() for line in lines if line.strip()), "")
        if not first or first.startswith(("%%", "%px", "%autopx")):
            return lines  # cell magics and the px magics themselves run here
        return [f"%%px{self.magics.suffix}\n", *lines]


@magics_class
class ParallelMagics(Magics):
    """The px magics of one view (`suffix` tells several apart: `%px_even`, ...)."""

    def __init__(
        self, shell: Any, view: DirectView | None, suffix: str = "", automatic: bool = False
    ) -> None:
        self._view = view
        self.suffix = suffix
        #: Made for the newest Client (or %load_ext) rather than by view.activate().
        self.automatic = automatic
        self.reset_settings()
        self.last_result: AsyncResult | None = None
        self.running_locally = False
        self._autopx: _AutopxTransform | None = None
        px = "px" + suffix
        self.magics = {
            "line": {
                px: self.px,
                "pxresult" + suffix: self.pxresult,
                "pxconfig" + suffix: self.pxconfig,
                "autopx" + suffix: self.autopx,
            },
            "cell": {px: self.cell_px},
        }
        super().__init__(shell=shell)

    def reset_settings(self) -> None:
        """The default settings of the magics (what `%pxconfig` changes)."""
        self.verbose = False
        self.stream_output = True
        self.progress_after = 2.0
        #: The signal Ctrl-C sends the engines of a blocking %%px (0: none).
        self.signal_on_interrupt: int = signal.SIGINT
        #: Seconds a blocking %%px waits before it interrupts the engines (0: no limit).
        self.timeout = 0.0

    # --- the view -------------------------------------------------------------------------

    @property
    def view(self) -> DirectView:
        """The view the magics run on; with `%load_ext pxgrpc` alone, the local cluster's."""
        if self._view is None:
            from pxgrpc.client.client import Client
            from pxgrpc.client.errors import PxError

            try:
                Client()  # registers itself, which sets self._view
            except (PxError, OSError, ValueError) as exc:
                raise UsageError(
                    f"no pxgrpc cluster to run on ({exc}). Start one (`pxgrpc cluster start -n 4`) "
                    "or connect with `rc = pxgrpc.Client(...)`."
                ) from None
        assert self._view is not None
        return self._view

    @property
    def _ipython(self) -> Any:
        """The IPython shell the magics belong to."""
        if self.shell is None:
            raise UsageError("the px magics are not registered with an IPython shell")
        return self.shell

    def use_view(self, view: DirectView, automatic: bool) -> None:
        """Run the magics on `view` from now on."""
        self._view = view
        self.automatic = automatic

    def client_closed(self) -> bool:
        """Whether the client of the view was closed (so a new client may take over)."""
        return self._view is not None and bool(getattr(self._view.client, "_closed", False))

    # --- %px and %%px ---------------------------------------------------------------------

    @no_var_expand  # type: ignore[untyped-decorator]
    def px(self, line: str = "") -> AsyncResult | None:
        """Run one line of code on the engines.

        Examples
        --------
        ::

            In [1]: %px a = os.getpid()

            In [2]: %px print(a)
            [stdout:0]
            1234
            [stdout:1]
            1235
        """
        return self.parallel_execute(line)

    @magic_arguments.magic_arguments(name="px")  # type: ignore[untyped-decorator]
    @exec_args
    @output_args
    @magic_arguments.argument(  # type: ignore[untyped-decorator]
        "--local", action="store_const", const=True, dest="local", help="run the cell here too"
    )
    def cell_px(self, line: str = "", cell: str = "") -> AsyncResult | None:
        """Run the cell on the engines.

        Examples
        --------
        ::

            In [1]: %%px --targets ::2
               ...: import os
               ...: os.getpid()
            Out[0:1]: 1234
            Out[2:1]: 1236
        """
        args = magic_arguments.parse_argstring(self.cell_px, line)
        return self.parallel_execute(
            cell,
            targets=parse_targets(args.targets, self.view.client) if args.targets else None,
            block=args.block,
            groupby=args.groupby,
            save_name=args.save_name,
            stream=args.stream,
            progress_after=args.progress_after,
            signal_on_interrupt=(
                parse_interrupt_signal(args.signal_on_interrupt) if args.signal_on_interrupt else None
            ),
            local=bool(args.local),
            timeout=args.timeout,
        )

    def parallel_execute(
        self,
        code: str,
        *,
        targets: Targets = None,
        block: bool | None = None,
        groupby: str = "type",
        save_name: str | None = None,
        stream: bool | None = None,
        progress_after: float | None = None,
        signal_on_interrupt: int | None = None,
        local: bool = False,
        timeout: float | None = None,
    ) -> AsyncResult | None:
        """What %px and %%px do: submit `code`, optionally run it here too, then wait and show."""
        view = self.view
        block = view.block if block is None else block
        if self.verbose:
            where = describe_targets(view.targets if targets is None else targets)
            print(f"{'Parallel' if block else 'Async parallel'} execution on engine(s): {where}")
        ar = view.execute(code, silent=False, targets=targets, block=False)
        self.last_result = ar
        if save_name:
            self._ipython.user_ns[save_name] = ar
        if local:
            self._run_locally(code)
        if not block:
            return ar
        wait_and_show(
            ar,
            groupby,
            self.stream_output if stream is None else stream,
            self.progress_after if progress_after is None else progress_after,
            self.signal_on_interrupt if signal_on_interrupt is None else signal_on_interrupt,
            self.timeout if timeout is None else timeout,
        )
        return None

    def _run_locally(self, code: str) -> None:
        self.running_locally = True
        try:
            self._ipython.run_cell(code)
        finally:
            self.running_locally = False

    # --- %pxresult, %pxconfig, %autopx ----------------------------------------------------

    @magic_arguments.magic_arguments(name="pxresult")  # type: ignore[untyped-decorator]
    @output_args
    def pxresult(self, line: str = "") -> None:
        """Show the outputs and results of the last %px / %%px (e.g. after --noblock).

        Examples
        --------
        ::

            In [1]: %px --noblock os.getpid()
            In [2]: %pxresult
            Out[0:2]: 60920
            Out[1:2]: 60921
        """
        args = magic_arguments.parse_argstring(self.pxresult, line)
        ar = self.last_result
        if ar is None:
            raise UsageError("%pxresult shows the result of the last %px command, and there is none yet")
        if args.save_name:
            self._ipython.user_ns[args.save_name] = ar
            return
        try:
            ar.wait()
        except KeyboardInterrupt:
            if self.signal_on_interrupt:  # (as configured by %pxconfig --signal-on-interrupt)
                ar.interrupt(self.signal_on_interrupt)
            raise
        display_outputs(ar, args.groupby)
        error = ar.exception()
        if error is not None:
            raise error

    @magic_arguments.magic_arguments(name="pxconfig")  # type: ignore[untyped-decorator]
    @exec_args
    def pxconfig(self, line: str = "") -> None:
        """Set the defaults of the px magics: targets, blocking, streaming, verbosity, progress bar.

        With no flags, print the current settings.
        """
        args = magic_arguments.parse_argstring(self.pxconfig, line)
        changed = False
        if args.targets:
            self.view.targets = parse_targets(args.targets, self.view.client)
            changed = True
        settings = {
            "block": ("view", args.block),
            "stream_output": ("self", args.stream),
            "verbose": ("self", args.verbose),
            "progress_after": ("self", args.progress_after),
        }
        for name, (owner, value) in settings.items():
            if value is not None:
                setattr(self.view if owner == "view" else self, name, value)
                changed = True
        if args.signal_on_interrupt is not None:
            self.signal_on_interrupt = parse_interrupt_signal(args.signal_on_interrupt)
            changed = True
        if args.timeout is not None:
            self.timeout = max(0.0, args.timeout)
            changed = True
        if not changed:
            print(
                f"targets={self.view.targets!r} block={self.view.block} stream={self.stream_output} "
                f"verbose={self.verbose} progress_after={self.progress_after} "
                f"signal_on_interrupt={signal_name(self.signal_on_interrupt)} timeout={self.timeout:g}"
            )

    def autopx(self, line: str = "") -> None:
        """Toggle auto-parallel mode: every cell runs on the engines (as %%px) until %autopx again.

        Examples
        --------
        ::

            In [1]: %autopx
            %autopx enabled
            In [2]: a = 10
            In [3]: print(a)
            [stdout:0]
            10
            In [4]: %autopx
            %autopx disabled
        """
        transforms = self._ipython.input_transformers_cleanup
        if self._autopx is None:
            self._autopx = _AutopxTransform(self)
            transforms.append(self._autopx)
            print("%autopx enabled")
        else:
            if self._autopx in transforms:
                transforms.remove(self._autopx)
            self._autopx = None
            print("%autopx disabled")
