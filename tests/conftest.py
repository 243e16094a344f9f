"""Fixtures that start real controllers and engines, and always stop them."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import pytest

import pxgrpc
from pxgrpc.client.lanelink import LaneLink
from pxgrpc.client.submit import Submitter
from pxgrpc.cluster import Cluster


def pytest_configure(config: pytest.Config) -> None:
    """A run ended with SIGTERM (a CI timeout, `kill`) still tears its fixtures down: pytest
    handles KeyboardInterrupt by running every finalizer, so the clusters started are stopped
    instead of outliving the run."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, interrupt)


@pytest.fixture(scope="session", autouse=True)
def pxgrpc_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Keep connection files, cluster state and logs of the test run in a private directory."""
    home = str(tmp_path_factory.mktemp("pxgrpc-home"))
    saved = {k: os.environ.get(k) for k in ("PXGRPC_DIR", "PXGRPC_CONNECTION_FILE")}
    os.environ["PXGRPC_DIR"] = home
    os.environ.pop("PXGRPC_CONNECTION_FILE", None)
    try:
        yield home
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


ClusterFactory = Callable[..., tuple[Cluster, pxgrpc.Client]]


@pytest.fixture
def make_cluster() -> Iterator[ClusterFactory]:
    """Start clusters for one test: `cluster, rc = make_cluster(n=2)`; all are stopped afterwards."""
    started: list[Cluster] = []

    def start(n: int = 2, **kwargs: object) -> tuple[Cluster, pxgrpc.Client]:
        cluster = Cluster(n=n, **kwargs)  # type: ignore[arg-type]
        started.append(cluster)
        rc = cluster.start_and_connect_sync(timeout=60)
        return cluster, rc

    try:
        yield start
    finally:
        for cluster in started:
            cluster.stop_cluster_sync()


@pytest.fixture(scope="module")
def cluster4() -> Iterator[tuple[Cluster, pxgrpc.Client]]:
    """A 4-engine cluster shared by the tests of one module."""
    cluster = Cluster(n=4)
    try:
        rc = cluster.start_and_connect_sync(timeout=60)
        yield cluster, rc
    finally:
        cluster.stop_cluster_sync()


@pytest.fixture
def rc(cluster4: tuple[Cluster, pxgrpc.Client]) -> pxgrpc.Client:
    return cluster4[1]


@pytest.fixture(scope="module")
def cluster3() -> Iterator[tuple[Cluster, pxgrpc.Client]]:
    """Three engines shared by a module's tests that do not kill any."""
    cluster = Cluster(n=3)
    try:
        yield cluster, cluster.start_and_connect_sync(timeout=60)
    finally:
        cluster.stop_cluster_sync()


@pytest.fixture
def restored() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Controllers a test restarts by hand: killed at the end."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture
def paths(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Which path each DirectView submit took (True: straight to the engine), in order."""
    taken: list[bool] = []
    original = Submitter._send_direct

    def spy(self: Submitter, *args: Any, **kwargs: Any) -> bool:
        went = original(self, *args, **kwargs)
        taken.append(went)
        return went

    monkeypatch.setattr(Submitter, "_send_direct", spy)
    return taken


def until(condition: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> None:
    """Wait until `condition()` holds (AssertionError naming `what` after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def lanes_open(rc: pxgrpc.Client, shared_memory: bool = False) -> None:
    """Wait until the client's task lanes to all its engines are open (and, with
    `shared_memory`, the engines map its files)."""
    links = rc._transport._links

    def open_() -> bool:
        found = [links.usable(e) for e in rc.ids]
        return all(isinstance(k, LaneLink) and (k.shares_memory or not shared_memory) for k in found)

    until(open_, what="the task lanes")
