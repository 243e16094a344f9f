"""`python -m pxgrpc.controller.supervisor ARGS...`: run `pxgrpc-controller ARGS...` and bring it
back with `--restore` whenever it dies.

Clusters started by `pxgrpc cluster start` or `pxgrpc.Cluster(...)` run their controller under
this small supervisor (unless `--no-restart-controller` / `restart_controller=False`): when
the controller dies (killed, crashed) it is started again with `--restore`, on the same port
with the same tokens and certificates, and its engines and clients reconnect. A controller that
exits on its own (status 0: shut down; 2: bad arguments or address) is not restarted, and
neither is one that dies `MAX_RESTARTS` times within `RESTART_WINDOW` seconds. SIGTERM and
SIGINT are passed on to the controller; the supervisor exits with it.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from types import FrameType

log = logging.getLogger("pxgrpc.controller.supervisor")

MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
#: Exit statuses of a controller that stopped on purpose (or can never start): no restart.
FINAL_STATUSES = (0, 2)


def describe(status: int) -> str:
    """'signal SIGKILL' or 'status 1'."""
    if status < 0:
        try:
            return f"signal {signal.Signals(-status).name}"
        except ValueError:
            return f"signal {-status}"
    return f"status {status}"


class Supervisor:
    """Runs the controller command and restarts it with `--restore` when it dies."""

    def __init__(self, controller_args: list[str]) -> None:
        self.args = list(controller_args)
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = False
        self.restarts: list[float] = []

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)

    def run(self) -> int:
        """Supervise until the controller stops on purpose; its exit status."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._forward)
        args = self.args
        while True:
            self.child = subprocess.Popen([sys.executable, "-m", "pxgrpc.controller", *args])
            status = self.child.wait()
            if self.stopping or status in FINAL_STATUSES:
                return max(status, 0)
            now = time.monotonic()
            self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW] + [now]
            if len(self.restarts) > MAX_RESTARTS:
                log.error(
                    "the controller died %d times within %.0f s (last: %s): giving up",
                    len(self.restarts),
                    RESTART_WINDOW,
                    describe(status),
                )
                return 1
            log.warning(
                "the controller (pid %d) died with %s: restarting it with --restore",
                self.child.pid,
                describe(status),
            )
            if "--restore" not in args:
                args = [*args, "--restore"]
            time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return Supervisor(sys.argv[1:] if argv is None else argv).run()


if __name__ == "__main__":
    sys.exit(main())
