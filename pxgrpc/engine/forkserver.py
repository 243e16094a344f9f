"""Many engines on one host from one warmed process: `python -m pxgrpc.engine.forkserver`.

Starting an engine costs mostly imports (gRPC, protobuf, numpy, the engine package): with 64
engines on 2 cores each paying them, that is most of a cluster's start. The engine forkserver
imports everything once, then forks `--count` children; each child sets up its own log file and
runs `pxgrpc.engine.main` with the engine arguments given after `--`. The children share the
parent's imported modules copy-on-write, so each engine's unique memory is small too.

gRPC's rule for fork: no channel or server (and so none of gRPC's threads) may exist in the
parent when it forks. The forkserver creates none; before forking it checks that neither
gRPC's threads nor other Python threads run, and refuses otherwise. The parent then stays,
reaps its children and exits with the first non-zero status among them (0 when all exited
cleanly). The children stay in its process group, so stopping the group stops them all.

    python -m pxgrpc.engine.forkserver --count 64 --log /tmp/engine-{}.log -- --file controller.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Sequence

log = logging.getLogger("pxgrpc.engine.forkserver")


def warm_up() -> None:
    """Import what every engine imports, creating no gRPC channel, server or thread."""
    import importlib

    for name in ("numpy", "pxgrpc.engine.__main__", "pxgrpc.engine.datapath", "pxgrpc.engine.ipython"):
        importlib.import_module(name)
    from pxgrpc import sharedmem

    sharedmem.prepare()  # (each engine's first shared value would pay it: 64 engines, 64 times)


def foreign_threads() -> list[str]:
    """Threads that make a fork unsafe: Python threads besides this one, and gRPC's C threads
    (gRPC names them: grpc_global_timer, event_engine, ...). Unnamed native threads, such as
    OpenBLAS's pool that numpy starts at import, are not counted: OpenBLAS winds its pool down
    around a fork itself."""
    import threading

    found = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    with contextlib.suppress(OSError):  # (no procfs: only Python's threads can be seen)
        with open("/proc/self/comm") as f:
            own = f.read().strip()
        for task in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError), open(f"/proc/self/task/{task}/comm") as f:
                name = f.read().strip()
            if name != own:
                found.append(name)
    return found


def fork_engines(count: int, log_template: str, engine_argv: Sequence[str], first: int = 0) -> list[int]:
    """Fork `count` engines, numbered from `first` in their log names; return their pids.
    Refuses if gRPC's threads (or other Python threads) run in this process."""
    threads = foreign_threads()
    if threads:
        raise RuntimeError(
            f"the engine forkserver runs other threads ({', '.join(sorted(set(threads)))}): forking "
            "now would break gRPC (no channel or server may exist before a fork)"
        )
    sys.stdout.flush()
    sys.stderr.flush()  # (else the children would write out the parent's buffered text again)
    # What the imports made lives as long as the engines: out of the collector's sight, the
    # children's collections neither walk it (cheaper) nor write to its pages (which would copy
    # them into each child: more unique memory).
    gc.collect()
    gc.freeze()
    pids = []
    for i in range(count):
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os._exit(_run_child(log_template.format(first + i), engine_argv))
        pids.append(pid)
    return pids


def _run_child(log_path: str, engine_argv: Sequence[str]) -> int:
    code = 1
    try:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _reseed()
        from pxgrpc.engine.__main__ import main

        code = main(list(engine_argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - a child must report and exit, never return to the parent's code
        import traceback

        traceback.print_exc()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    return code


def _reseed() -> None:
    """Children must not share the parent's random state (Python's `random` reseeds itself at
    fork; numpy's global generator does not)."""
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()


def supervise(pids: list[int]) -> int:
    """Reap the children until all have exited; the first non-zero status (or 0)."""
    first_failure = 0
    remaining = set(pids)
    while remaining:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid in remaining:
            remaining.discard(pid)
            code = os.waitstatus_to_exitcode(status)
            if code:
                log.warning("engine process %d exited with status %d", pid, code)
                first_failure = first_failure or (code if code > 0 else 128 - code)
    return first_failure


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    engine_argv = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="python -m pxgrpc.engine.forkserver", description=__doc__)
    parser.add_argument("--count", type=int, required=True, help="how many engines to fork")
    parser.add_argument("--first", type=int, default=0, help="the number of the first engine's log")
    parser.add_argument("--log", required=True, help="each engine's log file; {} is its number")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(own)
    if args.count < 1 or "{}" not in args.log:
        parser.error("--count must be at least 1 and --log must contain {}")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    warm_up()
    try:
        pids = fork_engines(args.count, args.log, engine_argv, args.first)
    except RuntimeError as exc:
        print(f"pxgrpc engine forkserver: {exc}", file=sys.stderr)
        return 2
    log.info("forked %d engines: %s", len(pids), " ".join(map(str, pids)))
    return supervise(pids)


if __name__ == "__main__":
    sys.exit(main())
