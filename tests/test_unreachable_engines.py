"""Engines whose data endpoint the client cannot reach: all DirectView work still runs, through
the controller, and nothing hangs. Real hosts in network namespaces (10.81.0.0/24):

    ctl  10.81.0.1   pxgrpc-controller --ip 10.81.0.1 --tls auto
    eng  10.81.0.2   two engines: they offer a data endpoint at 10.81.0.2 (direct tasks, bulk data)
    cli  10.81.0.3   a Client, which reaches ctl but not eng: its packets to eng are refused
                     ("unreachable" route: the connection fails at once) or silently dropped
                     (sent to a hardware address nobody has: the connection attempt just hangs)

The client runs a script of DirectView calls (apply, execute, push, pull, large values both
ways, scatter/gather) and prints what each returned. Needs root and iproute2; skips otherwise.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pxgrpc.security.connection_file import engine_connection_file
from tests.netns import NetnsLan, ip, namespaces_unavailable, pxgrpc_env

pytestmark = pytest.mark.timeout(180)

SUBNET = "10.81.0"
HOSTS = {"ctl": 1, "eng": 2, "cli": 3}
NOBODY = "02:00:00:00:81:99"  # a hardware address no interface has

CLIENT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import pxgrpc as ipp

    rc = ipp.Client(sys.argv[1])
    deadline = time.monotonic() + 60
    while rc.ids != [0, 1] and time.monotonic() < deadline:
        time.sleep(0.1)
    print("ENGINES", rc.ids, [bool(e["data_url"]) for e in rc.engines], flush=True)
    dv = rc[:]

    def got(ar):
        return ar.get(timeout=60)

    print("APPLY", got(dv.apply_async(lambda a, b: a * b, 6, 7)), flush=True)
    got(dv.execute("a = 5", block=False))
    print("PULL", got(dv.pull("a", block=False)), flush=True)
    got(dv.push({"b": 9}, block=False))
    print("PUSHPULL", got(dv.pull("b", block=False)), flush=True)
    big = np.arange(400_000, dtype=np.float64)
    got(rc[0].push({"big": big}, block=False))
    print("BIG", bool(np.array_equal(got(rc[0].pull("big", block=False)), big)), flush=True)
    result = got(rc[1].apply_async(lambda n: __import__("numpy").ones(n), 400_000))
    print("BIGRESULT", float(result.sum()), flush=True)
    got(dv.scatter("s", list(range(10)), block=False))
    print("GATHER", got(dv.gather("s", block=False)), flush=True)
    in_order = [rc[0].execute(f"seen = {i}", block=False) for i in range(20)]
    for ar in in_order:
        got(ar)
    print("ORDER", got(rc[0].pull("seen", block=False)), flush=True)
    print("DONE", flush=True)
    """
)


@pytest.fixture(scope="module")
def lan() -> Iterator[NetnsLan]:
    reason = namespaces_unavailable()
    if reason is not None:
        pytest.skip(f"unreachable-engine test skipped: {reason}")
    net = NetnsLan(SUBNET, prefix="pxun")
    try:
        net.build(HOSTS)
        for host in HOSTS:
            (net.root / host).mkdir(mode=0o700)
        yield net
    finally:
        net.teardown()


def _python(lan: NetnsLan, host: str, args: list[str]) -> subprocess.Popen[str]:
    return lan.spawn(host, [sys.executable, *args], env=pxgrpc_env(lan.root / host))


@pytest.fixture(scope="module")
def client_file(lan: NetnsLan) -> Path:
    """The controller on ctl, two engines on eng; the client's copy of controller.json on cli."""
    conn = lan.root / "ctl" / "controller.json"
    controller = _python(lan, "ctl", ["-m", "pxgrpc.controller", "--ip", lan.addr("ctl"), "--tls", "auto"])
    deadline = time.monotonic() + 60
    while not engine_connection_file(conn).exists():
        if controller.poll() is not None:
            pytest.fail(f"the controller exited: {controller.stdout.read() if controller.stdout else ''}")
        assert time.monotonic() < deadline, "no connection file"
        time.sleep(0.05)
    on_eng = lan.root / "eng" / "controller.json"
    on_eng.write_bytes(conn.read_bytes())
    on_eng.chmod(0o600)
    for _ in range(2):
        _python(lan, "eng", ["-m", "pxgrpc.engine", "--file", str(on_eng)])
    on_cli = lan.root / "cli" / "controller.json"
    on_cli.write_bytes(conn.read_bytes())
    on_cli.chmod(0o600)
    return on_cli


def _cut_off(lan: NetnsLan, how: str) -> None:
    """Make eng unreachable from cli (only from cli: ctl and eng still talk)."""
    cli, eng = lan.ns("cli"), lan.addr("eng")
    if how == "refused":
        ip("-n", cli, "route", "add", "unreachable", f"{eng}/32")
    else:  # frames for eng go to a hardware address nobody has: they vanish
        ip("-n", cli, "neigh", "replace", eng, "lladdr", NOBODY, "dev", "eth0", "nud", "permanent")


def _reconnect(lan: NetnsLan, how: str) -> None:
    cli, eng = lan.ns("cli"), lan.addr("eng")
    if how == "refused":
        ip("-n", cli, "route", "del", "unreachable", f"{eng}/32")
    else:
        ip("-n", cli, "neigh", "del", eng, "dev", "eth0")


@pytest.mark.parametrize("how", ["refused", "silent"])
def test_direct_view_work_goes_through_the_controller_when_the_engines_cannot_be_reached(
    lan: NetnsLan, client_file: Path, how: str
) -> None:
    _cut_off(lan, how)
    try:
        script = lan.root / "cli" / "client.py"
        script.write_text(CLIENT)
        run = lan.run(
            "cli",
            [sys.executable, str(script), str(client_file)],
            env=pxgrpc_env(lan.root / "cli"),
            timeout=150,
        )
    finally:
        _reconnect(lan, how)
    lines = dict(line.split(" ", 1) for line in run.stdout.splitlines() if " " in line)
    report = f"stdout:\n{run.stdout}\nstderr:\n{run.stderr[-3000:]}"
    assert run.returncode == 0 and "DONE" in run.stdout.split(), report
    assert lines["ENGINES"] == "[0, 1] [True, True]", report  # (they do offer an endpoint)
    assert lines["APPLY"] == "[42, 42]", report
    assert lines["PULL"] == "[5, 5]", report
    assert lines["PUSHPULL"] == "[9, 9]", report
    assert lines["BIG"] == "True", report
    assert lines["BIGRESULT"] == "400000.0", report
    assert lines["GATHER"] == str(list(range(10))), report
    assert lines["ORDER"] == "19", report
    gave_up = set(re.findall(r"data endpoint (\S+) unusable", run.stderr))
    assert {url.rsplit(":", 1)[0] for url in gave_up} == {lan.addr("eng")} and len(gave_up) == 2, report
