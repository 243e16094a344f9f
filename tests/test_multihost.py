"""A cluster across separate network hosts, for real: Linux network namespaces on a private LAN.

Four hosts, each its own network namespace with one interface on a bridge (10.77.0.0/24):

    ctl  10.77.0.1   pxgrpc-controller --ip 10.77.0.1 --tls auto   (the others know it as head.lan)
    e1   10.77.0.2   two engines, from a copy of controller.json: they serve a direct data
                     endpoint on 10.77.0.2 over TLS (certificate signed by the controller)
    e2   10.77.0.3   two engines, from a copy of controller-engine.json (no client token: they
                     check clients' tokens against its SHA-256, and get a certificate for the
                     address they register from, 10.77.0.3, so they serve data directly too)
    cli  10.77.0.4   a Client from a copy of controller.json: execute/push/pull/scatter/gather

Each host has its own PXGRPC_DIR; files move between them only by explicit copies, as an
administrator would scp them. The tests also show that a host without the token, or without
the CA, is refused with a clear message, and that the controller will not listen on the LAN
without TLS unless forced. Everything is created under names unique to this run and removed in
`finally`. Needs root and iproute2 (`ip`); skips, saying why, where namespaces cannot be made.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pxgrpc.security.connection_file import ConnectionInfo, engine_connection_file, read_connection_file
from pxgrpc.security.tokens import new_token
from tests.netns import NetnsLan, namespaces_unavailable, pxgrpc_env

pytestmark = pytest.mark.timeout(180)

SUBNET = "10.77.0"
HOSTS = {"ctl": 1, "e1": 2, "e2": 3, "cli": 4}
HEAD_NAME = "head.lan"  # the controller's host name in the other hosts' /etc/hosts
CMD_TIMEOUT = 60.0


class Lan:
    """The four hosts on one bridge; each has its own PXGRPC_DIR and knows ctl as head.lan."""

    def __init__(self) -> None:
        self.net = NetnsLan(SUBNET, prefix="px")

    def addr(self, host: str) -> str:
        return self.net.addr(host)

    def home(self, host: str) -> Path:
        return self.net.root / host

    def build(self) -> None:
        self.net.build(HOSTS)
        for host in HOSTS:
            self.home(host).mkdir(mode=0o700, parents=True)
            self.net.write_etc(host, "hosts", f"127.0.0.1 localhost\n{self.addr('ctl')} {HEAD_NAME}\n")

    def spawn(
        self, host: str, args: list[str], extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        """Start a long-running Python process on `host` (in its own process group)."""
        return self.net.spawn(host, [sys.executable, *args], env=pxgrpc_env(self.home(host), extra_env))

    def run(
        self, host: str, args: list[str], extra_env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a Python command on `host` to completion (TimeoutExpired means it hung)."""
        env = pxgrpc_env(self.home(host), extra_env)
        return self.net.run(host, [sys.executable, *args], env=env, timeout=CMD_TIMEOUT)

    def copy(self, path: Path, host: str) -> Path:
        """Copy a file to `host`'s PXGRPC_DIR, keeping its mode (like `scp -p`)."""
        target = self.home(host) / path.name
        shutil.copy2(path, target)
        return target


@pytest.fixture(scope="module")
def lan() -> Iterator[Lan]:
    reason = namespaces_unavailable()
    if reason is not None:
        pytest.skip(f"multi-host test skipped: {reason}")
    lan = Lan()
    try:
        lan.build()
        yield lan
    finally:
        lan.net.teardown()


@dataclass
class LanCluster:
    url: str
    ca_file_on: dict[str, Path]
    engine_file_on: dict[str, Path]
    client_file: Path
    info: ConnectionInfo


def wait_for_file(path: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + CMD_TIMEOUT
    while not path.exists():
        if proc.poll() is not None:
            output = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"the controller exited with {proc.returncode}: {output}")
        assert time.monotonic() < deadline, f"no {path} after {CMD_TIMEOUT} s"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def cluster(lan: Lan) -> LanCluster:
    """The controller on ctl (TLS auto, LAN address), two engines on each of e1 and e2."""
    conn = lan.home("ctl") / "controller.json"
    controller = lan.spawn("ctl", ["-m", "pxgrpc.controller", "--ip", lan.addr("ctl"), "--tls", "auto"])
    wait_for_file(engine_connection_file(conn), controller)
    info = read_connection_file(conn)
    assert info.url.startswith(f"{lan.addr('ctl')}:") and info.tls_ca
    engine_file = engine_connection_file(conn)
    copies = {"e1": lan.copy(conn, "e1"), "e2": lan.copy(engine_file, "e2")}
    ca_files = {}
    for host in ("e1", "e2", "cli"):
        ca_files[host] = lan.home(host) / "ca.pem"
        ca_files[host].write_text(info.tls_ca or "")
    for host in ("e1", "e2"):
        for _ in range(2):
            lan.spawn(host, ["-m", "pxgrpc.engine", "--file", str(copies[host])])
    return LanCluster(info.url, ca_files, copies, lan.copy(conn, "cli"), info)


#: Client-script lines that count the blobs a client uploads to the controller (relayed) in
#: `relayed`, for scripts that check their large data went straight to the engines.
COUNT_RELAYS = """relayed = []
relay = rc._transport.submitter._upload

async def counted(blob):
    relayed.append(blob.blob_id)
    await relay(blob)

rc._transport.submitter._upload = counted"""


CLIENT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import pxgrpc as ipp

    rc = ipp.Client(sys.argv[1], timeout=20)
    rc.wait_for_engines(4, timeout=60)
    dv = rc[:]
    dv.block = True
    dv.execute(
        "import socket\\n"
        "probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\\n"
        "probe.connect(('10.77.0.1', 9))  # UDP connect sends nothing: it only picks the route\\n"
        "my_address = probe.getsockname()[0]\\n"
    )
    dv.push({"factor": 3, "big": np.arange(2_000_000, dtype=np.int64)})
    dv.scatter("part", list(range(10)))
    dv.execute("scaled = [v * factor for v in part]; big_sum = int(big.sum())")
    lview = rc.load_balanced_view()
    {count_relays}
    direct = [e["id"] for e in rc.engines if e["data_url"]]
    large = np.random.default_rng(7).random(4_000_000)  # 32 MB
    for engine_id in direct:  # (one engine at a time: a broadcast would go through the controller)
        rc[engine_id].push({"large": large}, block=True)
    large_back = [bool(np.array_equal(a, large)) for a in rc[direct].pull("large", block=True)]
    print(json.dumps({
        "data_urls": [e["data_url"] for e in rc.engines],
        "large_back": large_back,
        "large_relayed": len(relayed),
        "gave_up": sorted(rc._transport._datapath._broken),
        "tls": bool(rc.connection_info.tls_ca),
        "url": rc.connection_info.url,
        "addresses": dv.pull("my_address"),
        "gathered": dv.gather("scaled"),
        "parts": dv.pull("part"),
        "big_sums": dv.pull("big_sum"),
        "big_back": int(rc[0].pull("big", block=True).sum()),
        "squares": lview.map_sync(lambda v: v * v, range(8)),
    }))
    rc.close()
    """
).replace("{count_relays}", COUNT_RELAYS)

REFUSED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import pxgrpc as ipp
    from pxgrpc.security.connection_file import ConnectionInfo, read_connection_file

    real = read_connection_file(sys.argv[1])
    cases = {
        "no_token": ConnectionInfo(url=real.url, token="guessed", engine_token="", tls_ca=real.tls_ca),
        "no_ca": ConnectionInfo(url=real.url, token=real.token, engine_token=""),
        "system_roots": ConnectionInfo(url=real.url, token=real.token, engine_token="", tls=True),
    }
    absent = real.url.replace("10.77.0.1:", "10.77.0.9:")  # no host has this address
    cases["absent_host"] = ConnectionInfo(url=absent, token=real.token, engine_token="", tls_ca=real.tls_ca)
    out = {}
    for name, info in cases.items():
        try:
            ipp.Client(connection_info=info, timeout=4).close()
            out[name] = ["connected", "", ""]
        except ipp.PxConnectionError as exc:
            out[name] = [type(exc).__name__, exc.cause, str(exc)]
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def client_run(lan: Lan, cluster: LanCluster) -> dict[str, Any]:
    """What CLIENT_SCRIPT, run on the client host, saw."""
    result = lan.run("cli", ["-c", CLIENT_SCRIPT, str(cluster.client_file)])
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def test_client_host_drives_engines_on_two_other_hosts_over_tls(
    lan: Lan, cluster: LanCluster, client_run: dict[str, Any]
) -> None:
    out = client_run
    assert out["tls"] and out["url"] == cluster.url
    assert sorted(out["addresses"]) == [lan.addr("e1")] * 2 + [lan.addr("e2")] * 2
    assert out["parts"] == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    assert out["gathered"] == [3 * v for v in range(10)]
    expected_sum = sum(range(2_000_000))
    assert out["big_sums"] == [expected_sum] * 4 and out["big_back"] == expected_sum
    assert out["squares"] == [v * v for v in range(8)]


def test_engines_from_either_file_serve_bulk_data_directly_at_their_lan_address(
    lan: Lan, client_run: dict[str, Any]
) -> None:
    out = client_run
    for url, address in zip(out["data_urls"], out["addresses"], strict=True):
        assert url.startswith(f"{address}:")
    hosts = sorted(url.rpartition(":")[0] for url in out["data_urls"])
    assert hosts == [lan.addr("e1")] * 2 + [lan.addr("e2")] * 2  # e2: the engine-only file
    assert out["large_back"] == [True] * 4
    assert out["large_relayed"] == 0 and out["gave_up"] == []


DATA_TOKENS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import grpc
    from pxgrpc import wire
    from pxgrpc.security.connection_file import read_connection_file
    from pxgrpc.security.tokens import auth_metadata

    info = read_connection_file(sys.argv[1])
    out = {}
    for name, token in (("client", info.token), ("engine", info.engine_token), ("none", "x")):
        with grpc.secure_channel(sys.argv[2], info.channel_credentials()) as channel:
            download = channel.unary_stream(
                f"/{wire.ENGINE_DATA_SERVICE}/Download",
                request_serializer=wire.pb.DownloadRequest.SerializeToString,
            )
            call = download(
                wire.pb.DownloadRequest(blob_id="nothing-here"),
                metadata=auth_metadata(token),
                timeout=10,
            )
            try:
                list(call)
                out[name] = "OK"
            except grpc.RpcError as exc:
                out[name] = exc.code().name
    print(json.dumps(out))
    """
)


def test_the_data_endpoint_of_an_engine_only_engine_checks_the_client_token_by_its_digest(
    lan: Lan, cluster: LanCluster, client_run: dict[str, Any]
) -> None:
    assert read_connection_file(cluster.engine_file_on["e2"]).token == ""  # e2 never held it
    e2_url = next(u for u in client_run["data_urls"] if u.startswith(f"{lan.addr('e2')}:"))
    result = lan.run("cli", ["-c", DATA_TOKENS_SCRIPT, str(cluster.client_file), e2_url])
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    # the client token goes through to the service (which has no such blob); others do not
    assert out == {"client": "NOT_FOUND", "engine": "UNAUTHENTICATED", "none": "UNAUTHENTICATED"}


def test_hosts_without_token_or_ca_are_refused(lan: Lan, cluster: LanCluster) -> None:
    result = lan.run("cli", ["-c", REFUSED_SCRIPT, str(cluster.client_file)])
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    kind, cause, message = out["no_token"]
    assert (kind, cause) == ("AuthenticationError", "wrong-token")
    assert "refused our credentials: invalid token" in message
    kind, cause, message = out["no_ca"]
    assert (kind, cause) == ("TLSError", "plaintext-to-tls")
    assert "speaks TLS but we connected without TLS" in message
    kind, cause, message = out["system_roots"]
    assert (kind, cause) == ("TLSError", "untrusted-certificate")
    assert "not signed by the system's trusted CAs" in message
    kind, cause, message = out["absent_host"]
    assert kind == "PxConnectionError" and cause in ("unreachable", "no-answer")
    assert "10.77.0.9" in message and "Fix:" in message


def _engine_refused(result: subprocess.CompletedProcess[str], phrase: str) -> None:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("pxgrpc-engine: ") and phrase in lines[-1], result.stderr
    assert "Traceback" not in result.stderr


def test_engine_hosts_without_token_or_ca_are_refused(lan: Lan, cluster: LanCluster) -> None:
    engine = ["-m", "pxgrpc.engine", "--controller", cluster.url, "--timeout", "10"]
    ca = str(cluster.ca_file_on["e1"])
    no_token = lan.run("e1", [*engine, "--token", "guessed", "--tls-ca", ca])
    _engine_refused(no_token, "refused our credentials: invalid token for pxgrpc.v1.Engine")
    no_ca = lan.run("e1", [*engine, "--token", cluster.info.engine_token])
    _engine_refused(no_ca, "speaks TLS but we connected without TLS")
    wrong_ca = lan.run("e2", [*engine, "--token", cluster.info.engine_token, "--tls"])
    _engine_refused(wrong_ca, "not signed by the system's trusted CAs")
    absent = cluster.url.replace(f"{lan.addr('ctl')}:", f"{SUBNET}.9:")
    gone = lan.run("e2", ["-m", "pxgrpc.engine", "--controller", absent, "--token", "e", "--timeout", "3"])
    _engine_refused(gone, f"{SUBNET}.9")


def test_engine_host_joins_from_flags(lan: Lan, cluster: LanCluster) -> None:
    """`pxgrpc-engine --controller host:port --tls-ca ca.pem --token ...` on an engine host."""
    token = cluster.info.engine_token
    ca = str(cluster.ca_file_on["e2"])
    proc = lan.spawn(
        "e2", ["-m", "pxgrpc.engine", "--controller", cluster.url, "--token", token, "--tls-ca", ca]
    )
    script = "import sys, pxgrpc as ipp; rc = ipp.Client(sys.argv[1]); rc.wait_for_engines(5, timeout=60)"
    result = lan.run("cli", ["-c", script, str(cluster.client_file)])
    assert result.returncode == 0, result.stderr
    assert proc.poll() is None


def test_controller_refuses_the_lan_without_tls_unless_forced(lan: Lan) -> None:
    refused = lan.run(
        "ctl",
        ["-m", "pxgrpc.controller", "--ip", lan.addr("ctl"), "--file", str(lan.home("ctl") / "plain.json")],
    )
    assert refused.returncode == 2
    assert "refusing to listen on '10.77.0.1' without TLS" in refused.stderr
    assert "--tls auto" in refused.stderr and "--insecure" in refused.stderr
    conn = lan.home("ctl") / "insecure.json"
    forced = lan.spawn(
        "ctl", ["-m", "pxgrpc.controller", "--ip", lan.addr("ctl"), "--insecure", "--file", str(conn)]
    )
    wait_for_file(conn, forced)
    os.killpg(forced.pid, signal.SIGKILL)
    output = forced.stdout.read() if forced.stdout else ""
    assert "WITHOUT TLS (--insecure)" in output


OWN_PKI_CLIENT = textwrap.dedent(
    """
    import json, sys
    import pxgrpc as ipp

    conn, cert, key = sys.argv[1:4]
    out = {}
    try:
        ipp.Client(conn, timeout=10).close()
    except ipp.AuthenticationError as exc:
        out["without_cert"] = [exc.cause, str(exc)]
    with ipp.Client(conn, tls_cert=cert, tls_key=key, timeout=10) as rc:
        rc.wait_for_engines(2, timeout=60)
        out["url"] = rc.connection_info.url
        out["sums"] = rc[:].apply_sync(sum, range(5))
    print(json.dumps(out))
    """
)


def test_own_ca_fixed_tokens_and_mutual_tls_from_flags(lan: Lan, tmp_path: Path) -> None:
    """The README's second and third recipes: `pxgrpc tls` files, tokens from the environment,
    the controller on all interfaces known by name, engines from flags, client certificates."""
    pki = tmp_path / "pki"
    for args in (
        ["ca"],
        ["server", "--host", HEAD_NAME, "--host", lan.addr("ctl")],
        ["client", "--name", "engine"],
        ["client", "--name", "alice"],
    ):
        made = subprocess.run(
            [sys.executable, "-m", "pxgrpc.cli", "tls", args[0], "--dir", str(pki), *args[1:]],
            capture_output=True,
            text=True,
            timeout=CMD_TIMEOUT,
        )
        assert made.returncode == 0, made.stderr
    tokens = {"PXGRPC_TOKEN": new_token(), "PXGRPC_ENGINE_TOKEN": new_token()}
    conn = lan.home("ctl") / "own.json"
    controller = lan.spawn(
        "ctl",
        [
            "-m",
            "pxgrpc.controller",
            "--ip",
            "0.0.0.0",
            "--port",
            "50051",
            "--location",
            HEAD_NAME,
            "--tls-cert",
            str(pki / "server.pem"),
            "--tls-key",
            str(pki / "server-key.pem"),
            "--tls-ca",
            str(pki / "ca.pem"),
            "--tls-client-auth",
            "--file",
            str(conn),
        ],
        extra_env=tokens,
    )
    wait_for_file(conn, controller)
    assert read_connection_file(conn).url == f"{HEAD_NAME}:50051"
    engine_env = {"PXGRPC_ENGINE_TOKEN": tokens["PXGRPC_ENGINE_TOKEN"]}
    for host in ("e1", "e2"):
        for name in ("ca.pem", "engine.pem", "engine-key.pem"):
            lan.copy(pki / name, host)
        home = lan.home(host)
        lan.spawn(
            host,
            [
                "-m",
                "pxgrpc.engine",
                "--controller",
                f"{HEAD_NAME}:50051",
                "--tls-ca",
                str(home / "ca.pem"),
                "--tls-cert",
                str(home / "engine.pem"),
                "--tls-key",
                str(home / "engine-key.pem"),
            ],
            extra_env=engine_env,
        )
    client_conn = lan.copy(conn, "cli")
    cert, key = lan.copy(pki / "alice.pem", "cli"), lan.copy(pki / "alice-key.pem", "cli")
    result = lan.run("cli", ["-c", OWN_PKI_CLIENT, str(client_conn), str(cert), str(key)])
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["url"] == f"{HEAD_NAME}:50051"
    assert out["sums"] == [10, 10]
    cause, message = out["without_cert"]
    assert cause == "client-certificate-required" and "requires a client certificate" in message


MTLS_CLIENT = textwrap.dedent(
    """
    import json, sys
    import grpc
    import numpy as np
    import pxgrpc as ipp
    from pxgrpc import wire
    from pxgrpc.security.credentials import channel_credentials
    from pxgrpc.security.tokens import auth_metadata

    rc = ipp.Client(sys.argv[1], timeout=20)
    rc.wait_for_engines(1, timeout=60)
    {count_relays}
    url = rc.engines[0]["data_url"]
    large = np.random.default_rng(3).random(4_000_000)  # 32 MB
    rc[0].push({"large": large}, block=True)
    back = bool(np.array_equal(rc[0].pull("large", block=True), large))
    info = rc.connection_info
    calls = {}
    for name, creds in (
        ("client_cert", info.channel_credentials()),
        ("no_client_cert", channel_credentials((info.tls_ca or "").encode())),
    ):
        with grpc.secure_channel(url, creds) as channel:
            download = channel.unary_stream(
                f"/{wire.ENGINE_DATA_SERVICE}/Download",
                request_serializer=wire.pb.DownloadRequest.SerializeToString,
            )
            call = download(
                wire.pb.DownloadRequest(blob_id="nothing-here"),
                metadata=auth_metadata(info.token),
                timeout=10,
            )
            try:
                list(call)
                calls[name] = "OK"
            except grpc.RpcError as exc:
                calls[name] = exc.code().name
    print(json.dumps({"url": url, "back": back, "relayed": len(relayed), "calls": calls}))
    rc.close()
    """
).replace("{count_relays}", COUNT_RELAYS)


def test_engine_only_engines_with_mutual_tls_serve_data_directly_to_certified_clients(lan: Lan) -> None:
    """`--tls auto --tls-client-auth`: the engine-only file holds the CA and an engine client
    certificate; the data endpoint of its engines asks clients for a certificate of that CA."""
    conn = lan.home("ctl") / "mtls.json"
    args = ["--ip", lan.addr("ctl"), "--tls", "auto", "--tls-client-auth", "--file", str(conn)]
    controller = lan.spawn("ctl", ["-m", "pxgrpc.controller", *args])
    engine_file = engine_connection_file(conn)
    wait_for_file(engine_file, controller)
    assert read_connection_file(engine_file).token == ""
    lan.spawn("e2", ["-m", "pxgrpc.engine", "--file", str(lan.copy(engine_file, "e2"))])
    result = lan.run("cli", ["-c", MTLS_CLIENT, str(lan.copy(conn, "cli"))])
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["url"].startswith(f"{lan.addr('e2')}:")
    assert out["back"] and out["relayed"] == 0
    assert out["calls"] == {"client_cert": "NOT_FOUND", "no_client_cert": "UNAVAILABLE"}
