"""Engines whose data endpoint the client cannot reach: all DirectView work still runs, through
the controller, and nothing hangs. Real hosts in network namespaces (10.81.0.0/24):

    ctl  10.81.0.1   pxgrpc-controller --ip 10.81.0.1 --tls auto
    eng  10.81.0.2   two engines: they offer a data endpoint at 10.81.0.2 (direct tasks, bulk data)
    cli  10.81.0.3   a Client, which reaches ctl but not eng: its packets to eng are refused
                     ("unreachable" route: the connection fails at once) or silently dropped
                     (sent to a hardware address nobody has: the connection attempt just hangs)

The client runs a script of DirectView calls (apply, execute, push, pull, large values both
ways, scatter/gather) and prints what each returned; another client sees the endpoints come
back once eng is plugged in again, and uses them again. Needs root and iproute2; skips otherwise.
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


COMES_BACK = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    import pxgrpc as ipp

    rc = ipp.Client(sys.argv[1])
    deadline = time.monotonic() + 60
    while rc.ids != [0, 1] and time.monotonic() < deadline:
        time.sleep(0.1)
    dv = rc[:]
    datapath = rc._transport._datapath
    urls = [e["data_url"] for e in rc.engines]
    print("APPLY", dv.apply_sync(lambda: 1), flush=True)
    rc[0].push({"big": np.arange(400_000.0)}, block=True)
    while not all(url in datapath._broken for url in urls) and time.monotonic() < deadline:
        time.sleep(0.1)
    print("GAVE_UP", [url in datapath._broken for url in urls], flush=True)
    while not os.path.exists(sys.argv[2]):  # (the test plugs eng back in)
        time.sleep(0.05)
    deadline = time.monotonic() + 60
    while any(url in datapath._broken for url in urls) and time.monotonic() < deadline:
        time.sleep(0.1)
    print("BACK", [datapath.url_for(i) is not None for i in rc.ids], flush=True)
    sources = "__import__('pxgrpc.engine.blobtransfer', fromlist=['_']).sources['client']"
    before = rc[0].apply_sync(eval, sources)
    big = np.arange(400_000.0)
    rc[0].push({"big": big}, block=True)
    print("DIRECT_UPLOADS", rc[0].apply_sync(eval, sources) - before, flush=True)
    links = rc._transport._links
    while any(links.usable(i) is None for i in rc.ids) and time.monotonic() < deadline:
        time.sleep(0.1)
    print("LINKS", [links.usable(i) is not None for i in rc.ids], flush=True)
    print("APPLY2", dv.apply_sync(lambda: 2), flush=True)
    print("BIG", bool(np.array_equal(rc[0].pull("big", block=True), big)), flush=True)
    print("DONE", flush=True)
    """
)


def test_an_endpoint_that_answers_again_is_used_again(lan: NetnsLan, client_file: Path) -> None:
    """The client gives up on endpoints it cannot reach, works through the controller, tries
    them again in the background (here every second: PXGRPC_DATA_RETRY=1) and, once they
    answer, sends data and tasks to them again."""
    script, plugged = lan.root / "cli" / "comes_back.py", lan.root / "cli" / "plugged"
    script.write_text(COMES_BACK)
    _cut_off(lan, "refused")
    cut = True
    env = pxgrpc_env(lan.root / "cli", {"PXGRPC_DATA_RETRY": "1"})
    proc = lan.spawn("cli", [sys.executable, str(script), str(client_file), str(plugged)], env=env)
    output: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            if line.startswith("GAVE_UP"):
                _reconnect(lan, "refused")
                cut = False
                plugged.touch()
                break
        rest, _ = proc.communicate(timeout=120)
        output.append(rest)
    finally:
        if cut:
            _reconnect(lan, "refused")
        proc.kill()
    out = "".join(output)
    lines = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    report = f"output:\n{out[-4000:]}"
    assert "DONE" in out.split(), report
    assert lines["APPLY"] == "[1, 1]" and lines["GAVE_UP"] == "[True, True]", report
    assert lines["BACK"] == "[True, True]", report
    assert lines["DIRECT_UPLOADS"] == "1", report  # (the push's array went to the engine itself)
    assert lines["LINKS"] == "[True, True]" and lines["APPLY2"] == "[2, 2]", report
    assert lines["BIG"] == "True", report
