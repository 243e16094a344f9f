"""`pxgrpc-engine --restart`: run the engine as a child process and replace it when it dies.

The supervisor runs where the engine runs (locally, or on the far side of ssh, mpiexec or srun),
so it sees how the engine process ended whichever launcher started it: its exit status or the
signal that killed it (SIGKILL from the OOM killer, SIGSEGV), and the last lines it wrote to
stderr. It tells the controller (`Engine.ReportExit`), which fails the dead engine's tasks with
that story and answers with the engine's id; the replacement registers under that id
(`RegisterRequest.requested_id`) with a fresh namespace.

An engine that ends on its own (status 0: the controller shut it down or went away) or cannot
start (status 2: bad arguments, no controller) is not replaced. Signals sent to the supervisor
(SIGTERM, SIGINT, SIGHUP) go on to the engine, and the supervisor then exits with it.
"""

from __future__ import annotations

import collections
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from types import FrameType
from typing import IO

import grpc

from pxgrpc import wire
from pxgrpc.security.connection_file import ConnectionInfo
from pxgrpc.security.credentials import channel_options
from pxgrpc.security.tokens import auth_metadata

log = logging.getLogger(__name__)

#: How many of the engine's last stderr lines the exit report carries.
STDERR_LINES = 20
#: An engine that dies sooner than this after starting makes the next start wait (doubling up
#: to MAX_BACKOFF), so that an engine that cannot live does not spin.
QUICK_DEATH = 5.0
MAX_BACKOFF = 30.0
#: Exit statuses after which the engine is not replaced (see the module docstring).
FINAL_STATUSES = (0, 2)


class EngineSupervisor:
    """Runs `command` (a `pxgrpc-engine` command line) and replaces it whenever it dies."""

    def __init__(self, command: list[str], info: ConnectionInfo, timeout: float = 10.0) -> None:
        self.command = command
        self.info = info
        self.timeout = timeout
        self.tail: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = False

    def run(self) -> int:
        """Supervise until the engine ends for good; its last exit status (as a shell gives it)."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._forward)
        engine_id: int | None = None
        backoff = 0.0
        while True:
            started = time.monotonic()
            status = self._run_once(engine_id)
            if self.stopping or status in FINAL_STATUSES:
                return _shell_status(status)
            engine_id = self._report(status)
            backoff = (
                min(max(0.5, 2 * backoff), MAX_BACKOFF) if time.monotonic() - started < QUICK_DEATH else 0
            )
            log.warning(
                "starting a replacement engine%s", f" as engine {engine_id}" if engine_id is not None else ""
            )
            deadline = time.monotonic() + backoff
            while not self.stopping and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.stopping:
                return _shell_status(status)

    def _run_once(self, engine_id: int | None) -> int:
        """Run one engine to its end, echoing and remembering its output; its returncode."""
        command = list(self.command)
        if engine_id is not None:
            command += ["--engine-id", str(engine_id)]
        self.tail.clear()
        self.child = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        assert self.child.stdout is not None
        reader = threading.Thread(target=self._pump, args=(self.child.stdout,), daemon=True)
        reader.start()
        status = self.child.wait()
        reader.join(2.0)
        return status

    def _pump(self, stream: IO[bytes]) -> None:
        out = sys.stderr
        for raw in stream:
            line = raw.decode(errors="replace").rstrip("\n")
            if line.strip():
                self.tail.append(line)
            out.write(line + "\n")
            out.flush()

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)

    def _report(self, status: int) -> int | None:
        """Tell the controller how the engine ended; the id to register the replacement under."""
        assert self.child is not None
        report = wire.pb.EngineExit(
            hostname=socket.gethostname(),
            pid=self.child.pid,
            exit_code=max(status, 0),
            signal=max(-status, 0),
            stderr_tail=list(self.tail),
        )
        how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
        log.warning("engine process %d %s", self.child.pid, how)
        creds = self.info.channel_credentials()
        options = channel_options(self.info.tls_server_name)
        channel = (
            grpc.secure_channel(self.info.url, creds, options=options)
            if creds is not None
            else grpc.insecure_channel(self.info.url, options=options)
        )
        with channel:
            call = channel.unary_unary(
                f"/{wire.ENGINE_SERVICE}/ReportExit",
                request_serializer=wire.pb.EngineExit.SerializeToString,
                response_deserializer=wire.pb.EngineExitReply.FromString,
            )
            try:
                reply = call(report, metadata=auth_metadata(self.info.engine_token), timeout=self.timeout)
            except grpc.RpcError as exc:
                log.warning("could not report the engine's exit to the controller: %s", exc)
                return None
        return int(reply.engine_id)


def _shell_status(returncode: int) -> int:
    """A Popen returncode as a shell reports it (128 + the signal for a killed process)."""
    return returncode if returncode >= 0 else 128 - returncode


def engine_command(argv: list[str]) -> list[str]:
    """The command line of the supervised engine: this one without `--restart`, marked
    supervised (which turns faulthandler on: a crash prints the Python stack to stderr)."""
    args = [a for a in argv if a != "--restart"]
    return [sys.executable, "-m", "pxgrpc.engine", *args, "--supervised"]


def supervise(argv: list[str], info: ConnectionInfo) -> int:
    """Run the engine of `argv` under an `EngineSupervisor`; its exit status."""
    return EngineSupervisor(engine_command(argv), info).run()
