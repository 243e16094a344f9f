"""A network link that drops for a few seconds is survived: real hosts in network namespaces.

Two hosts joined by one virtual cable (10.79.0.0/24): `ctl` runs the controller (TLS, on its
LAN address), `far` runs an engine and a client. The cable is pulled (`ip link set eth0 down`)
for 5 s while a task runs, and plugged back: the engine keeps its id and namespace, the task's
result arrives, and the client goes on. Needs root and iproute2; skips, saying why, otherwise.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_multihost import namespaces_unavailable

pytestmark = pytest.mark.timeout(150)

SUBNET = "10.79.0"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


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


class TwoHosts:
    """Namespaces `ctl` and `far` on one veth pair; processes and names cleaned up at the end."""

    def __init__(self) -> None:
        self.tag = secrets.token_hex(3)
        self.root = Path(tempfile.mkdtemp(prefix="pxgrpc-link-"))
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen[str]] = []

    def ns(self, host: str) -> str:
        return f"pxlk{self.tag}-{host}"

    def spawn(self, host: str, args: list[str], stdin: bool = False) -> subprocess.Popen[str]:
        env = {**os.environ, "PXGRPC_DIR": str(self.root / host), "PYTHONUNBUFFERED": "1"}
        env.pop("PXGRPC_CONNECTION_FILE", None)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(host), sys.executable, *args],
            env=env,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.processes.append(proc)
        return proc

    def teardown(self) -> None:
        for proc in self.processes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            for pipe in (proc.stdout, proc.stdin):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        for name in self.namespaces:
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                _ip("netns", "del", name)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def hosts() -> Iterator[TwoHosts]:
    reason = namespaces_unavailable()
    if reason is not None:
        pytest.skip(f"link-fault test skipped: {reason}")
    net = TwoHosts()
    try:
        ctl, far = net.ns("ctl"), net.ns("far")
        for name in (ctl, far):
            _ip("netns", "add", name)
            net.namespaces.append(name)
        _ip("link", "add", "name", "eth0", "netns", ctl, "type", "veth", "peer", "name", "eth0", "netns", far)
        for number, name in ((1, ctl), (2, far)):
            _ip("-n", name, "addr", "add", f"{SUBNET}.{number}/24", "dev", "eth0")
            _ip("-n", name, "link", "set", "eth0", "up")
            _ip("-n", name, "link", "set", "lo", "up")
        for host in ("ctl", "far"):
            (net.root / host).mkdir(mode=0o700)
        yield net
    finally:
        net.teardown()


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"exited with {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}")
        assert time.monotonic() < deadline, f"no {path}"
        time.sleep(0.05)


def test_a_link_down_for_5_seconds_is_survived_by_engine_and_client(hosts: TwoHosts) -> None:
    conn = hosts.root / "ctl" / "controller.json"
    controller = hosts.spawn("ctl", ["-m", "pxgrpc.controller", "--ip", f"{SUBNET}.1", "--tls", "auto"])
    _wait_for(conn, controller)
    copy = hosts.root / "far" / "controller.json"
    shutil.copy2(conn, copy)
    hosts.spawn("far", ["-m", "pxgrpc.engine", "--file", str(copy)])
    script = hosts.root / "far" / "client.py"
    script.write_text(CLIENT)
    client = hosts.spawn("far", [str(script), str(copy)], stdin=True)
    assert client.stdout is not None and client.stdin is not None
    ready = client.stdout.readline()
    assert ready.startswith("READY [0]"), ready + client.stdout.read()

    _ip("-n", hosts.ns("far"), "link", "set", "eth0", "down")
    time.sleep(5)
    _ip("-n", hosts.ns("far"), "link", "set", "eth0", "up")
    client.stdin.write("go\n")
    client.stdin.flush()
    after = client.stdout.readline()
    assert after.strip() == "AFTER [0] 7 slept", after + client.stdout.read()
