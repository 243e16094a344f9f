"""The Client: a connection to a controller, and the views onto its engines."""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import os
import pathlib
import signal
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pxgrpc.client.asyncresult import AsyncMapResult, AsyncResult
from pxgrpc.client.errors import NoEnginesError, TimeoutError
from pxgrpc.client.frontend import client_created
from pxgrpc.client.tasks import Job
from pxgrpc.client.transport import Transport
from pxgrpc.client.view import DirectView, LoadBalancedView, Targets
from pxgrpc.security import certfiles
from pxgrpc.security.connection_file import ConnectionInfo, default_connection_file, read_connection_file


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
        self._results: weakref.WeakSet[AsyncResult] = weakref.WeakSet()
        self._closed = False
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
        """`rc[0]`: one engine; `rc[:]`, `rc[::2]`, `rc[[0, 2]]`: several."""
        if isinstance(key, str):
            raise TypeError("index the client with engine ids, e.g. rc[0] or rc[:]")
        ids, _ = self.resolve_targets(key)
        return DirectView(self, key if isinstance(key, int) else ids)

    def _live(self, wanted: Sequence[int] = ()) -> list[int]:
        """The live engine ids as the controller last announced them (no round trip); asks the
        controller afresh only when one of `wanted` is not among them."""
        live = self._transport.engine_ids()
        if any(i not in live for i in wanted if i >= 0):
            live = self.ids
        return live

    def resolve_targets(self, targets: Targets) -> tuple[list[int], bool]:
        """The engine ids `targets` names now, and whether it names one engine (`rc[0]`).

        `None` and "all" are the live engines; an int, a slice or a list of ids pick among them
        (NoEnginesError for an engine that is not there).
        """
        if targets is None or targets == "all":
            return self._live(), False
        if isinstance(targets, int):
            live = self._live([targets])
            if targets not in live and not (targets < 0 and -len(live) <= targets):
                raise NoEnginesError(f"no engine {targets} (engines: {live})")
            return [live[targets] if targets < 0 else targets], True
        if isinstance(targets, slice):
            return self._live()[targets], False
        if isinstance(targets, str):
            raise TypeError(f"targets must be engine ids, a slice, 'all' or None, not {targets!r}")
        wanted = list(targets)
        live = self._live(wanted)
        missing = [i for i in wanted if i not in live]
        if missing:
            raise NoEnginesError(f"no engine {missing[0]} (engines: {live})")
        return wanted, False

    def direct_view(self, targets: Targets = "all") -> DirectView:
        """A DirectView; 'all' follows the engines registered at each call."""
        if targets != "all":
            ids, single = self.resolve_targets(targets)
            return DirectView(self, ids[0] if single else ids)
        return DirectView(self, "all")

    def load_balanced_view(self, targets: Targets = None) -> LoadBalancedView:
        """A LoadBalancedView over all engines."""
        return LoadBalancedView(self, targets)

    def executor(self, targets: Targets = None) -> ViewExecutor:
        """A `concurrent.futures.Executor` that runs submitted calls load-balanced."""
        return ViewExecutor(self.load_balanced_view(targets))

    def wait_for_engines(self, n: int | None = None, timeout: float = -1, block: bool = True) -> None:
        """Wait until at least `n` engines are registered (raise TimeoutError after `timeout` s)."""
        if n is None:
            return
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        while len(self._transport.list_engines()) < n:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.ids)} engines of {n} registered after {timeout} s")
            time.sleep(0.02)

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
        ar: AsyncResult
        if job.join is not None:
            ar = AsyncMapResult(self, ids, job.name, job.join, job.targets, ordered=job.ordered)
        else:
            ar = AsyncResult(self, ids, job.name, job.targets, single=job.single)
        self._results.add(ar)
        self._transport.submit(ids, job, ar)
        return ar

    @property
    def outstanding(self) -> set[str]:
        """Ids of tasks submitted by this client that have not finished."""
        ids: set[str] = set()
        for ar in list(self._results):
            if not ar.done():
                ids.update(ar.msg_ids[i] for i, o in enumerate(ar._outcomes) if o is None)
        return ids

    def wait(self, jobs: Any = None, timeout: float = -1) -> bool:
        """Wait for `jobs` (AsyncResults), or for everything this client submitted."""
        pending = (
            _results_of(jobs) if jobs is not None else [ar for ar in list(self._results) if not ar.done()]
        )
        wait_for = None if timeout is None or timeout < 0 else timeout
        _, not_done = concurrent.futures.wait(pending, wait_for)
        return not not_done

    def abort(self, jobs: Any = None, targets: Targets = None, block: bool | None = None) -> list[str]:
        """Abort queued tasks: `jobs` (AsyncResults or task ids), the queued tasks of `targets`,
        or all of this client's. Returns the ids of the tasks dropped (those not started yet)."""
        if jobs is not None:
            task_ids = (
                [tid for ar in _results_of(jobs) for tid in ar.msg_ids] if not _are_ids(jobs) else list(jobs)
            )
            return self._transport.abort(task_ids) if task_ids else []
        if targets is not None:
            return self._transport.abort([], self.resolve_targets(targets)[0])
        return self._transport.abort(sorted(self.outstanding))

    def interrupt(self, targets: Targets = "all", sig: int = signal.SIGINT) -> list[int]:
        """Interrupt the code running on the engines; returns the engines that were running some.

        With SIGINT (the default) it raises KeyboardInterrupt there and the engines stay up.
        Another signal goes to the engine processes: `rc.interrupt(sig=signal.SIGTERM)` ends
        them, and their unfinished tasks fail with `EngineError`.
        """
        return self._transport.interrupt(self.resolve_targets(targets)[0], sig)

    def queue_status(self, targets: Targets = "all", verbose: bool = False) -> dict[int | str, Any]:
        """`{engine_id: {'queue': n, 'completed': n, 'tasks': n}, 'unassigned': n}`."""
        ids = self.resolve_targets(targets)[0] if not isinstance(targets, list) else targets
        return self._transport.queue_status(ids, verbose)

    def shutdown(self, targets: Targets = "all", hub: bool = False, block: bool | None = None) -> None:
        """Stop engines; with `hub=True` the controller too."""
        ids = self.resolve_targets(targets)[0]
        self._transport.shutdown(ids, controller=hub)

    # --- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (engines and controller keep running)."""
        if not self._closed:
            self._closed = True
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


class ViewExecutor(concurrent.futures.Executor):
    """`concurrent.futures.Executor` on a LoadBalancedView; futures are AsyncResults."""

    def __init__(self, view: LoadBalancedView) -> None:
        self.view = view
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> AsyncResult:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        return self.view.apply_async(fn, *args, **kwargs)

    def map(
        self, fn: Callable[..., Any], *iterables: Any, timeout: float | None = None, chunksize: int = 1
    ) -> Iterator[Any]:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        return self.view.imap(fn, *iterables, chunksize=chunksize)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._shutdown = True
        if wait:
            self.view.client.wait()


def _close_at_exit(ref: weakref.ReferenceType[Client]) -> None:
    client = ref()
    if client is not None:
        client.close()


def _are_ids(jobs: Any) -> bool:
    return isinstance(jobs, list | tuple | set) and all(isinstance(j, str) for j in jobs)


def _results_of(jobs: Any) -> list[AsyncResult]:
    if isinstance(jobs, AsyncResult):
        return [jobs]
    return [j for j in jobs if isinstance(j, AsyncResult)]
