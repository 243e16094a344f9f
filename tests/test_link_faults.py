"""A network link that drops for a few seconds is survived: real hosts in network namespaces.

Two hosts on one bridge (10.79.0.0/24): `ctl` runs the controller (TLS, on its
LAN address), `far` runs an engine and a client. Its cable is pulled (`ip link set eth0 down`)
for 5 s while a task runs, and plugged back: the engine keeps its id and namespace, the task's
result arrives, and the client goes on. Needs root and iproute2; skips, saying why, otherwise.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns import NetnsLan, namespaces_unavailable, pxgrpc_env

pytestmark = pytest.mark.timeout(150)

SUBNET = "10.79.0"


CLIENT = textwrap.dedent(
    """
    import sys, time
    import pxgrpc as ipp

    rc = ipp.Client(sys.argv[1], reconnect_timeout=60)
    deadline = time.monotonic() + 60
    while rc.ids != [0] and time.monotonic() < deadline:
        time.sleep(0.1)
    rc[:]["x"] = 7

    def slow():
        import time
        time.sleep(8)
        return "slept"

    ar = rc[0].apply_async(slow)
    print("READY", rc.ids, flush=True)
    sys.stdin.readline()
    print("AFTER", rc.ids, rc[0].apply_sync(lambda: x), ar.get(timeout=60), flush=True)
    """
)


@pytest.fixture
def hosts() -> Iterator[NetnsLan]:
    reason = namespaces_unavailable()
    if reason is not None:
        pytest.skip(f"link-fault test skipped: {reason}")
    net = NetnsLan(SUBNET, prefix="pxlk")
    try:
        net.build({"ctl": 1, "far": 2})
        for host in ("ctl", "far"):
            (net.root / host).mkdir(mode=0o700)
        yield net
    finally:
        net.teardown()


def _python(hosts: NetnsLan, host: str, args: list[str], stdin: bool = False) -> subprocess.Popen[str]:
    """Start Python on `host`, its PXGRPC_DIR being the host's own directory."""
    return hosts.spawn(host, [sys.executable, *args], env=pxgrpc_env(hosts.root / host), stdin=stdin)


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"exited with {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}")
        assert time.monotonic() < deadline, f"no {path}"
        time.sleep(0.05)


def test_a_link_down_for_5_seconds_is_survived_by_engine_and_client(hosts: NetnsLan) -> None:
    conn = hosts.root / "ctl" / "controller.json"
    controller = _python(hosts, "ctl", ["-m", "pxgrpc.controller", "--ip", f"{SUBNET}.1", "--tls", "auto"])
    _wait_for(conn, controller)
    copy = hosts.root / "far" / "controller.json"
    shutil.copy2(conn, copy)
    _python(hosts, "far", ["-m", "pxgrpc.engine", "--file", str(copy)])
    script = hosts.root / "far" / "client.py"
    script.write_text(CLIENT)
    client = _python(hosts, "far", [str(script), str(copy)], stdin=True)
    assert client.stdout is not None and client.stdin is not None
    ready = client.stdout.readline()
    assert ready.startswith("READY [0]"), ready + client.stdout.read()

    hosts.set_link("far", up=False)
    time.sleep(5)
    hosts.set_link("far", up=True)
    client.stdin.write("go\n")
    client.stdin.flush()
    after = client.stdout.readline()
    assert after.strip() == "AFTER [0] 7 slept", after + client.stdout.read()
