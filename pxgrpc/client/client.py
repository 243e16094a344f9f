"""The Client: a connection to a controller, and the views onto its engines."""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import os
import pathlib
import signal
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

from pxgrpc.client.asyncresult import AsyncResult
from pxgrpc.client.balanced import LoadBalancedView
from pxgrpc.client.dependencies import DependencyScheduler
from pxgrpc.client.errors import PxConnectionError, TimeoutError
from pxgrpc.client.executor import ViewExecutor
from pxgrpc.client.frontend import client_created
from pxgrpc.client.history import TaskHistory
from pxgrpc.client.mapresult import AsyncMapResult
from pxgrpc.client.targets import EngineTargets, Targets
from pxgrpc.client.tasks import Apply, Execute, Job, TaskOutcome
from pxgrpc.client.transport import Transport
from pxgrpc.client.view import DirectView
from pxgrpc.client.waiting import SubmittedResults, task_ids_of
from pxgrpc.remote_calls import clear_namespace
from pxgrpc.security import certfiles
from pxgrpc.security.connection_file import ConnectionInfo, default_connection_file, read_connection_file
from pxgrpc.signals import parse_signal


class Client:
    """A connection to a pxgrpc controller.

    With no arguments it reads the connection file of the local cluster
    (`~/.pxgrpc/controller.json`, or `$PXGRPC_CONNECTION_FILE`):

    >>> rc = Client()
    >>> rc.ids
    [0, 1, 2, 3]
    >>> dv = rc[:]            # DirectView on all engines
    >>> lview = rc.load_balanced_view()

    For a controller on another machine, copy its connection file here (mode 0600) and pass its
    path. When the controller requires client certificates (``--tls-client-auth`` with your own
    CA), pass yours: ``Client("controller.json", tls_cert="me.pem", tls_key="me-key.pem")``;
    ``tls_ca`` and ``tls_server_name`` override the CA and the expected certificate name.

    When the controller goes away (restarted with ``--restore``, a network fault) the client
    reconnects by itself for up to ``reconnect_timeout`` seconds; pending results stay pending
    and arrive after, each once.
    """

    #: Whether `clear` and `send_signal` wait by default (as ipyparallel's `Client.block`).
    block = False

    def __init__(
        self,
        url_file: str | os.PathLike[str] | None = None,
        *,
        cluster_id: str = "",
        connection_info: ConnectionInfo | None = None,
        timeout: float = 10.0,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        tls_ca: str | os.PathLike[str] | None = None,
        tls_server_name: str | None = None,
        reconnect_timeout: float = 120.0,
    ) -> None:
        path: pathlib.Path | None = None
        if connection_info is None:
            path = pathlib.Path(url_file) if url_file is not None else default_connection_file(cluster_id)
            connection_info = read_connection_file(path)
        connection_info = certfiles.override(
            connection_info, cert=tls_cert, key=tls_key, ca=tls_ca, server_name=tls_server_name
        )
        self.connection_info = connection_info
        self._transport = Transport(connection_info, timeout, reconnect_timeout, path)
        self._results = SubmittedResults(self.get_result)
        self._history = TaskHistory()
        self._closed = False
        self._engines = EngineTargets(lambda: self.ids, self._transport.engine_ids)
        self._dependencies = DependencyScheduler(
            self._transport.submit, self._transport.new_task_ids, self._engines.live, lambda: self.outstanding
        )
        atexit.register(_close_at_exit, weakref.ref(self))
        client_created(self)

    # --- engines and views ----------------------------------------------------------------

    @property
    def ids(self) -> list[int]:
        """Ids of the engines registered now."""
        return [e["id"] for e in self._transport.list_engines()]

    @property
    def engines(self) -> list[dict[str, Any]]:
        """The engines with their host, pid, state and counts."""
        return self._transport.list_engines()

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[DirectView]:
        return (self[i] for i in self.ids)

    def __getitem__(self, key: int | slice | Sequence[int]) -> DirectView:
        """`rc[0]`: one engine; `rc[:]`, `rc[::2]`, `rc[[0, 2]]`: several.

        An engine id that is not registered raises IndexError (a `NoEnginesError`).
        """
        if isinstance(key, str):
            raise TypeError("index the client with engine ids, e.g. rc[0] or rc[:]")
        ids, _ = self.resolve_targets(key)
        return DirectView(self, key if isinstance(key, int) else ids)

    def resolve_targets(self, targets: Targets) -> tuple[list[int], bool]:
        """The engine ids `targets` names now, and whether it names one engine (`rc[0]`).

        `None` and "all" are the live engines; an int, a slice or a list of ids pick among them
        (NoEnginesError for an engine that is not there).
        """
        return self._engines.resolve(targets)

    def direct_view(self, targets: Targets = "all") -> DirectView:
        """A DirectView; 'all' follows the engines registered at each call."""
        if targets != "all":
            ids, single = self.resolve_targets(targets)
            return DirectView(self, ids[0] if single else ids)
        return DirectView(self, "all")

    def load_balanced_view(self, targets: Targets = None) -> LoadBalancedView:
        """A LoadBalancedView over all engines, or over `targets` (engine ids, a slice, or one
        id: `-1` is the last engine), resolved now as ipyparallel does."""
        if targets is None or targets == "all":
            return LoadBalancedView(self, None)
        return LoadBalancedView(self, self.resolve_targets(targets)[0])

    def executor(self, targets: Targets = None) -> ViewExecutor:
        """A `concurrent.futures.Executor` that runs submitted calls load-balanced."""
        return ViewExecutor(self.load_balanced_view(targets))

    def wait_for_engines(
        self, n: int | None = None, timeout: float = -1, block: bool = True
    ) -> concurrent.futures.Future[None] | None:
        """Wait until at least `n` engines are registered (raise TimeoutError after `timeout` s).

        With `block=False`, return at once a `concurrent.futures.Future` that is done when they
        are (or fails with TimeoutError).
        """
        if not block:
            future: concurrent.futures.Future[None] = concurrent.futures.Future()

            def wait() -> None:
                try:
                    self.wait_for_engines(n, timeout)
                except BaseException as exc:  # noqa: BLE001 - the waiter gets whatever failed
                    future.set_exception(exc)
                else:
                    future.set_result(None)

            threading.Thread(target=wait, name="pxgrpc-wait-for-engines", daemon=True).start()
            return future
        if n is None:
            return None
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        while len(self._transport.list_engines()) < n:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.ids)} engines of {n} registered after {timeout} s")
            time.sleep(0.02)
        return None

    # --- work ----------------------------------------------------------------------------

    def submit(self, job: Job) -> AsyncResult:
        """Start `job` (what every view call comes down to) and return its AsyncResult.

        The one way work goes from the API to the transport: fresh task ids, the AsyncResult
        that listens to them (an AsyncMapResult when the job joins its parts), kept among this
        client's outstanding results, then the tasks handed to the transport.

        >>> from pxgrpc.client.tasks import Apply, Job
        >>> rc.submit(Job("getpid", rc.ids, Apply(os.getpid))).get()
        [4242, 4243]
        """
        ids = self._transport.new_task_ids(len(job.targets))
        ar = _result_for(self, ids, job)
        self._results.add(ar)
        job = self._history.add(ids, job, ar)
        if job.constraints is not None and job.constraints.any():
            self._dependencies.hold(ids, job, ar)
        else:
            self._transport.submit(ids, job, ar)
        return ar

    # --- this client's history ------------------------------------------------------------

    @property
    def history(self) -> list[str]:
        """Ids of the tasks this client submitted, oldest first (the last `history_limit`)."""
        return self._history.ids

    @property
    def history_limit(self) -> int:
        """How many tasks the history remembers (ids, results, what resubmit needs)."""
        return self._history.limit

    @history_limit.setter
    def history_limit(self, limit: int) -> None:
        self._history.limit = limit

    def get_result(
        self, indices_or_msg_ids: Any = None, block: bool | None = None, owner: bool = True
    ) -> AsyncResult:
        """An AsyncResult for tasks this client submitted: history indices (`-1`, the default,
        is the last task), task ids, AsyncResults, or a list of them.

        >>> dv.apply_sync(os.getpid)
        >>> rc.get_result(-1).metadata["engine_id"]

        KeyError for a task this client does not remember (another client's, older than
        `history_limit`, or one whose result is no longer held: the results of the last 16 calls
        are, and those the program holds): pxgrpc's controller keeps no task database.
        """
        ar = self._history.recall(self, -1 if indices_or_msg_ids is None else indices_or_msg_ids)
        if block:
            ar.wait()
        return ar

    def resubmit(
        self, indices_or_msg_ids: Any = None, metadata: Any = None, block: bool | None = None
    ) -> AsyncResult:
        """Run finished tasks of this client again (same action, same engine, or load-balanced
        again); returns the new tasks' AsyncResult.

        ValueError for tasks still in flight, and for pushes, scatters and calls with large
        arguments (the history does not keep large data alive to resubmit it).
        """
        job = self._history.resubmission(-1 if indices_or_msg_ids is None else indices_or_msg_ids)
        ar = self.submit(job)
        if block:
            ar.wait()
        return ar

    def task_finished(self, outcome: TaskOutcome) -> None:
        """(Called by AsyncResult for each task of this client.) Remember how it ended, for the
        tasks that depend on it."""
        self._dependencies.record(outcome.task_id, outcome.engine_id, outcome.error is None)

    @property
    def outstanding(self) -> set[str]:
        """Ids of tasks submitted by this client that have not finished."""
        return self._results.outstanding()

    def wait(self, jobs: Any = None, timeout: float = -1) -> bool:
        """Wait for `jobs` (AsyncResults, `concurrent.futures` futures, task ids or history
        indices, or a list of them), or for everything this client submitted; return whether
        all of it is done."""
        return self._results.wait(jobs, timeout)

    def wait_interactive(self, jobs: Any = None, interval: float = 1.0, timeout: float = -1) -> None:
        """Wait with a progress bar for `jobs` (as in `wait`), or for everything outstanding."""
        self._results.wait_interactive(jobs, interval, timeout)

    def abort(self, jobs: Any = None, targets: Targets = None, block: bool | None = None) -> list[str]:
        """Abort queued tasks: `jobs` (AsyncResults or task ids), the queued tasks of `targets`,
        or all of this client's. Returns the ids of the tasks dropped (those not started yet);
        a task sent straight to its engine a moment ago is dropped too if it has not started,
        without being listed (the controller had not heard of it yet)."""
        if jobs is not None:
            return self._abort(task_ids_of(jobs))
        if targets is not None:
            return self._transport.abort([], self.resolve_targets(targets)[0])
        return self._abort(sorted(self.outstanding))

    def _abort(self, task_ids: Sequence[str]) -> list[str]:
        """Abort tasks: those still held for their dependencies here, the others at the controller."""
        held = self._dependencies.abort(task_ids)
        dropped = set(held)
        rest = [t for t in task_ids if t not in dropped]
        return held + (self._transport.abort(rest) if rest else [])

    def interrupt(self, targets: Targets = "all", sig: int = signal.SIGINT) -> list[int]:
        """Interrupt the code running on the engines; returns the engines that were running some.

        With SIGINT (the default) it raises KeyboardInterrupt there and the engines stay up.
        Another signal goes to the engine processes: `rc.interrupt(sig=signal.SIGTERM)` ends
        them, and their unfinished tasks fail with `EngineError`.
        """
        return self._transport.interrupt(self.resolve_targets(targets)[0], sig)

    def queue_status(self, targets: Targets = "all", verbose: bool = False) -> dict[Any, Any]:
        """`{engine_id: {'queue': n, 'completed': n, 'tasks': n}, 'unassigned': n}`; for one
        engine id (`targets=0`) that engine's `{'queue': n, 'completed': n, 'tasks': n}`."""
        ids = self.resolve_targets(targets)[0] if not isinstance(targets, list) else targets
        status = self._transport.queue_status(ids, verbose)
        if isinstance(targets, int):
            return status[ids[0]]  # type: ignore[no-any-return]
        return status

    def clear(self, targets: Targets = None, block: bool | None = None) -> AsyncResult | None:
        """Delete the user's variables on the engines of `targets` (all by default); returns
        the AsyncResult, or None after waiting if `block` (default `self.block`)."""
        ids = self.resolve_targets(targets)[0]
        ar = self.submit(Job("clear", ids, Apply(clear_namespace)))
        if self.block if block is None else block:
            ar.get()
            return None
        return ar

    def send_signal(self, sig: int | str, targets: Targets = None, block: bool | None = None) -> list[int]:
        """Send the engine processes of `targets` (all by default) a signal, a number or a name
        (`"SIGINT"`, `"SIGTERM"`), whether they run a task or not. SIGINT interrupts the running
        task (KeyboardInterrupt) and leaves the engine up; SIGTERM ends it. Returns the engines
        signalled (the signal is sent before this returns: `block` is accepted for ipyparallel)."""
        try:
            number = int(parse_signal(sig))
        except ValueError as exc:
            raise ValueError(f"send_signal: {exc}") from None
        return self._transport.interrupt(self.resolve_targets(targets)[0], number, include_idle=True)

    def shutdown(self, targets: Targets = "all", hub: bool = False, block: bool | None = None) -> None:
        """Stop engines; with `hub=True` the controller too."""
        ids = self.resolve_targets(targets)[0]
        self._transport.shutdown(ids, controller=hub)

    # --- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (engines and controller keep running)."""
        if not self._closed:
            self._closed = True
            self._dependencies.close(PxConnectionError("the client was closed"))
            self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            with contextlib.suppress(Exception):  # nothing sensible to do at interpreter teardown
                self.close()

    def __repr__(self) -> str:
        return f"<Client {self.connection_info.url}>"

    def activate(self, targets: Targets = "all", suffix: str = "") -> DirectView:
        """A blocking DirectView on `targets` that %px (or %px{suffix}) uses."""
        view = self.direct_view(targets)
        view.block = True
        view.activate(suffix)
        return view


def _result_for(client: Client, task_ids: Sequence[str], job: Job) -> AsyncResult:
    """The AsyncResult `job`'s tasks report to: an AsyncMapResult when the job joins its parts,
    else an AsyncResult (whose values are `ExecuteReply`s when every action is an execute)."""
    if job.join is not None:
        return AsyncMapResult(
            client,
            task_ids,
            job.name,
            job.join,
            job.targets,
            ordered=job.ordered,
            sizes=job.sizes,
            return_exceptions=job.return_exceptions,
        )
    actions = [job.action] if job.action is not None else job.each
    execute = isinstance(actions, list) and all(isinstance(a, Execute) for a in actions)
    return AsyncResult(
        client,
        task_ids,
        job.name,
        job.targets,
        single=job.single,
        execute=execute,
        return_exceptions=job.return_exceptions,
    )


def _close_at_exit(ref: weakref.ReferenceType[Client]) -> None:
    client = ref()
    if client is not None:
        client.close()
