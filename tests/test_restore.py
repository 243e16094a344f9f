"""A controller that dies comes back (`--restore`, or its supervisor) and the cluster goes on."""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import pxgrpc as ipp
from pxgrpc.controller.restore import tls_file
from pxgrpc.security.connection_file import ConnectionInfo, read_connection_file, write_connection_file
from pxgrpc.security.errors import SecurityError
from tests.conftest import ClusterFactory

pytestmark = pytest.mark.timeout(120)


def _wait_dead(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} still runs")


def _wait_for(check: Callable[[], Any], timeout: float = 60.0) -> Any:
    """The first true value of `check()` (calls that fail while the controller is away are retried)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ipp.PxConnectionError, SecurityError, OSError):
            if value := check():
                return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s")


def _new_pid(conn: pathlib.Path, old: int) -> int:
    pid = read_connection_file(conn).controller_pid
    return pid if pid != old else 0


def _restore(conn: pathlib.Path, cluster_id: str, *extra: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "pxgrpc.controller", "--file", str(conn), "--cluster-id", cluster_id]
    return subprocess.Popen([*command, "--restore", *extra], start_new_session=True)


def _count_deliveries(rc: ipp.Client) -> list[str]:
    """Task ids whose result reached their AsyncResult (each should appear once)."""
    delivered: list[str] = []
    in_flight = rc._transport._in_flight
    finish = in_flight.finish

    def counting(task_id: str) -> Any:
        listener, url = finish(task_id)
        if listener is not None:
            delivered.append(task_id)
        return listener, url

    in_flight.finish = counting  # type: ignore[method-assign]
    return delivered


def test_sigkilled_controller_restored_keeps_engines_namespaces_and_the_client(
    make_cluster: ClusterFactory, restored: list[subprocess.Popen[bytes]]
) -> None:
    cluster, rc = make_cluster(n=2, restart_controller=False, controller_args=["--prefetch", "1"])

    def _slow(seconds: float, value: str) -> str:
        import time

        time.sleep(seconds)
        return value

    ids, pids = rc.ids, rc[:].apply_sync(os.getpid)
    rc[:]["x"] = 42
    delivered = _count_deliveries(rc)
    finishing = rc[0].apply_async(_slow, 1.5, "finished during the outage")
    lview = rc.load_balanced_view()
    lview.block = False
    # Engine 1 takes one of these (prefetch 1) and the rest wait in the controller: lost with it.
    queued = [lview.apply(_slow, 3, f"lb{i}") for i in range(4)]
    time.sleep(0.5)
    old = read_connection_file(cluster.connection_file)
    assert cluster.controller is not None
    cluster.controller.send_signal(signal.SIGKILL)
    cluster.controller.wait(10)
    time.sleep(2.5)  # engine 0 finishes its task while no controller runs
    restored.append(_restore(cluster.connection_file, cluster.cluster_id))

    assert finishing.get(timeout=60) == "finished during the outage"
    outcomes = []
    for ar in queued:
        try:
            outcomes.append(ar.get(timeout=60))
        except ipp.RemoteError as exc:
            assert exc.ename == "ControllerRestarted" and "submit it again" in str(exc), exc
            outcomes.append("lost")
    assert outcomes.count("lost") >= 2 and "lb0" in outcomes, outcomes
    new = read_connection_file(cluster.connection_file)
    assert (new.url, new.token, new.engine_token) == (old.url, old.token, old.engine_token)
    assert new.controller_pid == restored[0].pid
    assert rc.ids == ids
    assert rc[:].apply_sync(os.getpid) == pids
    assert rc[:]["x"] == [42, 42]
    assert delivered.count(finishing.msg_ids[0]) == 1
    time.sleep(1.0)  # any repeat of a result would come now
    assert delivered.count(finishing.msg_ids[0]) == 1 and len(delivered) == len(set(delivered))


def test_tls_auto_controller_restored_with_the_same_ca_and_keys(
    make_cluster: ClusterFactory, restored: list[subprocess.Popen[bytes]]
) -> None:
    cluster, rc = make_cluster(n=1, restart_controller=False, controller_args=["--tls", "auto"])
    rc[:]["z"] = "tls"
    old = read_connection_file(cluster.connection_file)
    kept = tls_file(cluster.connection_file)
    assert kept.stat().st_mode & 0o777 == 0o600
    assert cluster.controller is not None
    cluster.controller.send_signal(signal.SIGKILL)
    cluster.controller.wait(10)
    restored.append(_restore(cluster.connection_file, cluster.cluster_id, "--tls", "auto"))
    assert _wait_for(lambda: _new_pid(cluster.connection_file, old.controller_pid))
    new = read_connection_file(cluster.connection_file)
    assert (new.url, new.tls_ca, new.token) == (old.url, old.tls_ca, old.token)
    assert _wait_for(lambda: rc.ids == [0])
    assert rc[0]["z"] == "tls"


def test_restore_refuses_while_the_controller_runs(make_cluster: ClusterFactory) -> None:
    cluster, _ = make_cluster(n=1, restart_controller=False)
    command = [sys.executable, "-m", "pxgrpc.controller", "--file", str(cluster.connection_file), "--restore"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "is still running" in result.stderr, result.stderr


def test_engines_give_up_after_their_reconnect_timeout(make_cluster: ClusterFactory) -> None:
    cluster, _ = make_cluster(n=1, restart_controller=False, engine_args=["--reconnect-timeout", "2"])
    assert cluster.controller is not None
    cluster.controller.send_signal(signal.SIGKILL)
    engine = cluster.engines[0]
    engine.wait(30)
    log = pathlib.Path(cluster.launchers[0].logs[0]).read_text()  # type: ignore[attr-defined]
    assert "gave up reconnecting to the controller" in log and "--reconnect-timeout" in log, log


def test_a_client_of_a_controller_that_never_returns_fails_after_its_reconnect_timeout(
    make_cluster: ClusterFactory,
) -> None:
    cluster, _ = make_cluster(n=1, restart_controller=False)
    rc = ipp.Client(cluster.connection_file, reconnect_timeout=2)
    try:
        ar = rc[0].apply_async(time.sleep, 30)
        assert cluster.controller is not None
        cluster.controller.send_signal(signal.SIGKILL)
        with pytest.raises(ipp.PxConnectionError, match="could not reconnect within 2 s"):
            ar.get(timeout=30)
    finally:
        rc.close()


def test_cluster_start_restarts_its_controller_when_it_dies(pxgrpc_home: str) -> None:
    cluster_id = "restart-test"
    run = [sys.executable, "-m", "pxgrpc.cli", "cluster"]
    try:
        started = subprocess.run(
            [*run, "start", "-n", "2", "--cluster-id", cluster_id], capture_output=True, text=True, timeout=60
        )
        assert "cluster ready" in started.stdout, started.stderr
        conn = pathlib.Path(pxgrpc_home) / f"controller-{cluster_id}.json"
        with ipp.Client(conn) as rc:
            rc[:]["y"] = "kept"
            first = read_connection_file(conn).controller_pid
            os.kill(first, signal.SIGKILL)
            _wait_dead(first)
            second = _wait_for(lambda: _new_pid(conn, first))
            assert _wait_for(lambda: rc.ids == [0, 1])
            assert rc[:]["y"] == ["kept", "kept"]
    finally:
        stopped = subprocess.run([*run, "stop", "--cluster-id", cluster_id], capture_output=True, text=True)
    assert "cluster stopped" in stopped.stdout
    _wait_dead(second)


def test_connection_file_is_replaced_atomically_and_private(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "controller.json"
    infos = [ConnectionInfo(url=f"127.0.0.1:{port}", token="t" * 4000, engine_token="e") for port in (1, 2)]
    write_connection_file(path, infos[0])
    stop = threading.Event()

    def rewrite() -> None:
        i = 0
        while not stop.is_set():
            write_connection_file(path, infos[i % 2])
            i += 1

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        for _ in range(300):  # a reader never sees half a file, nor a wider mode
            assert read_connection_file(path).url in ("127.0.0.1:1", "127.0.0.1:2")
    finally:
        stop.set()
        writer.join(10)
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["controller.json"]  # no temporary file left
