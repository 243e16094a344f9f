"""TLS, mutual TLS, tokens and the errors users see, with real processes and real certificates.

Every failure a user can run into when connecting (wrong token, untrusted certificate, plaintext
against TLS and the reverse, expired certificate, host-name mismatch, missing or foreign client
certificate) is checked for both `Client(...)` and `pxgrpc-engine`: the right error type and
cause, one line naming the cause and the fix, and no hang (every call has a timeout).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime
import os
import pathlib
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import pytest
import trustme

import pxgrpc as ipp
from pxgrpc import diagnose
from pxgrpc.cluster import Cluster
from pxgrpc.security import certs
from pxgrpc.security.certs import CertKey
from pxgrpc.security.connection_file import (
    ConnectionInfo,
    engine_connection_file,
    read_connection_file,
    write_connection_file,
)
from pxgrpc.security.credentials import server_credentials
from pxgrpc.security.errors import SecurityError
from pxgrpc.security.tokens import new_token

pytestmark = pytest.mark.timeout(60)

PROC_TIMEOUT = 30.0  # a failing command must end well within this


# --------------------------------------------------------------------------- helpers


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a pxgrpc command-line tool to completion (TimeoutExpired means it hung)."""
    modules = {
        "pxgrpc-engine": "pxgrpc.engine",
        "pxgrpc-controller": "pxgrpc.controller",
        "pxgrpc": "pxgrpc.cli",
    }
    command = [sys.executable, "-m", modules[args[0]], *args[1:]]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=PROC_TIMEOUT, stdin=subprocess.DEVNULL
    )


def last_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    return lines[-1]


def assert_engine_refused(result: subprocess.CompletedProcess[str], *phrases: str) -> str:
    """The engine exited non-zero with a one-line message naming cause and fix, no traceback."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    line = last_line(result.stderr)
    assert line.startswith("pxgrpc-engine: ")
    assert "Fix:" in line or "chmod 600" in line
    for phrase in phrases:
        assert phrase in line
    return line


def assert_one_line(err: BaseException, *phrases: str) -> None:
    message = str(err)
    assert "\n" not in message
    for phrase in phrases:
        assert phrase in message


def write_pem(path: pathlib.Path, data: bytes) -> pathlib.Path:
    path.write_bytes(data)
    return path


def write_private(path: pathlib.Path, info: ConnectionInfo) -> pathlib.Path:
    write_connection_file(path, info)
    return path


@contextlib.contextmanager
def bare_server(creds: grpc.ServerCredentials | None) -> Iterator[str]:
    """A gRPC server with no services: enough to fail (or pass) a TLS handshake."""
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
    if creds is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


def trustme_pair(leaf: trustme.LeafCert) -> CertKey:
    return CertKey(leaf.cert_chain_pems[0].bytes(), leaf.private_key_pem.bytes())


@contextlib.contextmanager
def running_cluster(n: int, *controller_args: str) -> Iterator[Cluster]:
    """A local cluster of `n` engines, connected, stopped at the end (even if start-up fails)."""
    cluster = Cluster(n=n, controller_args=list(controller_args))
    try:
        cluster.start_and_connect_sync(timeout=45)
        yield cluster
    finally:
        cluster.stop_cluster_sync()


@contextlib.contextmanager
def spawned(args: list[str]) -> Iterator[subprocess.Popen[str]]:
    """A long-running pxgrpc process in its own process group, killed at the end."""
    proc = subprocess.Popen(
        [sys.executable, "-m", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


def wait_for_connection_file(path: pathlib.Path, proc: subprocess.Popen[str]) -> ConnectionInfo:
    """Wait until a controller process has written its connection file (or died)."""
    deadline = time.monotonic() + PROC_TIMEOUT
    while not path.exists():
        assert proc.poll() is None, f"the controller exited: {proc.stderr.read() if proc.stderr else ''}"
        assert time.monotonic() < deadline, "no connection file"
        time.sleep(0.02)
    return read_connection_file(path)


def wait_for_engines(rc: ipp.Client, n: int) -> None:
    rc.wait_for_engines(n, timeout=30)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tls_cluster() -> Iterator[Cluster]:
    """A `--tls auto` controller with one engine."""
    with running_cluster(1, "--tls", "auto") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def plain_cluster() -> Iterator[Cluster]:
    """A loopback controller without TLS, no engines."""
    with running_cluster(0) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def mtls_cluster() -> Iterator[Cluster]:
    """A `--tls auto --tls-client-auth` controller with one engine (certificates from the files)."""
    with running_cluster(1, "--tls", "auto", "--tls-client-auth") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def other_ca() -> trustme.CA:
    """A CA nobody in these clusters trusts."""
    return trustme.CA()


def info_of(cluster: Cluster) -> ConnectionInfo:
    return read_connection_file(cluster.connection_file)


# --------------------------------------------------------------------------- working set-ups


def test_tls_auto_publishes_ca_and_engine_only_file(tls_cluster: Cluster) -> None:
    info = info_of(tls_cluster)
    assert info.tls and info.tls_ca and "BEGIN CERTIFICATE" in info.tls_ca
    engine_file = engine_connection_file(tls_cluster.connection_file)
    assert engine_file.name.endswith("-engine.json")
    for path in (tls_cluster.connection_file, engine_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    engine_info = read_connection_file(engine_file)
    assert engine_info.token == ""
    assert engine_info.engine_token == info.engine_token
    assert engine_info.url == info.url and engine_info.tls_ca == info.tls_ca
    with ipp.Client(tls_cluster.connection_file, timeout=5) as rc:
        assert rc[:].apply_sync(lambda: 6 * 7) == [42]


def test_engine_joins_from_the_engine_only_file(tls_cluster: Cluster) -> None:
    engine_file = engine_connection_file(tls_cluster.connection_file)
    with ipp.Client(tls_cluster.connection_file, timeout=5) as rc:
        before = len(rc.ids)
        with spawned(["pxgrpc.engine", "--file", str(engine_file)]):
            wait_for_engines(rc, before + 1)
            assert rc[:].apply_sync(lambda: "hi") == ["hi"] * (before + 1)


def test_engine_only_file_cannot_drive_the_cluster(tls_cluster: Cluster) -> None:
    engine_file = engine_connection_file(tls_cluster.connection_file)
    with pytest.raises(ipp.AuthenticationError) as err:
        ipp.Client(engine_file, timeout=5)
    assert_one_line(err.value, "no client token", "controller.json")


def test_engine_token_cannot_drive_the_cluster(tls_cluster: Cluster) -> None:
    info = info_of(tls_cluster)
    as_client = dataclasses.replace(info, token=info.engine_token)
    with pytest.raises(ipp.AuthenticationError) as err:
        ipp.Client(connection_info=as_client, timeout=5)
    assert err.value.cause == diagnose.FailureCause.WRONG_TOKEN
    assert err.value.code == "UNAUTHENTICATED"
    assert_one_line(err.value, "an engine token cannot be used as a client token", "Fix:")


def test_client_token_cannot_register_an_engine(tls_cluster: Cluster, tmp_path: pathlib.Path) -> None:
    info = info_of(tls_cluster)
    ca = write_pem(tmp_path / "ca.pem", (info.tls_ca or "").encode())
    result = run_cli("pxgrpc-engine", "--controller", info.url, "--token", info.token, "--tls-ca", str(ca))
    assert_engine_refused(result, "refused our credentials", "invalid token for pxgrpc.v1.Engine")


def test_mutual_tls_auto_works_with_the_certificates_in_the_files(mtls_cluster: Cluster) -> None:
    info = info_of(mtls_cluster)
    assert info.tls_client_cert and info.tls_client_key
    engine_info = read_connection_file(engine_connection_file(mtls_cluster.connection_file))
    assert engine_info.tls_client_cert and engine_info.tls_client_cert != info.tls_client_cert
    with ipp.Client(mtls_cluster.connection_file, timeout=5) as rc:
        assert rc[:].apply_sync(lambda: "mtls") == ["mtls"]


def test_user_certificates_with_mutual_tls_for_engines_and_clients(tmp_path: pathlib.Path) -> None:
    pki = tmp_path / "pki"
    for args in (
        ("ca",),
        ("server", "--host", "127.0.0.1"),
        ("client", "--name", "engine"),
        ("client", "--name", "alice"),
    ):
        made = run_cli("pxgrpc", "tls", args[0], "--dir", str(pki), *args[1:])
        assert made.returncode == 0, made.stderr
    assert stat.S_IMODE((pki / "ca-key.pem").stat().st_mode) == 0o600
    conn = tmp_path / "home" / "controller.json"
    controller = [
        "pxgrpc.controller",
        "--file",
        str(conn),
        "--tls-cert",
        str(pki / "server.pem"),
        "--tls-key",
        str(pki / "server-key.pem"),
        "--tls-ca",
        str(pki / "ca.pem"),
        "--tls-client-auth",
    ]
    with spawned(controller) as proc:
        info = wait_for_connection_file(conn, proc)
        engine = [
            "pxgrpc.engine",
            "--controller",
            info.url,
            "--token",
            info.engine_token,
            "--tls-ca",
            str(pki / "ca.pem"),
            "--tls-cert",
            str(pki / "engine.pem"),
            "--tls-key",
            str(pki / "engine-key.pem"),
        ]
        with spawned(engine):
            with pytest.raises(ipp.AuthenticationError) as err:
                ipp.Client(conn, timeout=5)
            assert err.value.cause == diagnose.FailureCause.CLIENT_CERT_REQUIRED
            assert_one_line(err.value, "requires a client certificate", "tls_cert=")
            with ipp.Client(conn, tls_cert=pki / "alice.pem", tls_key=pki / "alice-key.pem", timeout=5) as rc:
                wait_for_engines(rc, 1)
                assert rc[:].apply_sync(lambda: 1 + 1) == [2]


def test_engine_waits_for_a_controller_that_starts_later(tmp_path: pathlib.Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    token = new_token()
    conn = tmp_path / "late" / "controller.json"
    engine = ["pxgrpc.engine", "--controller", f"127.0.0.1:{port}", "--token", token, "--timeout", "20"]
    with spawned(engine) as engine_proc:
        time.sleep(0.5)  # the engine is retrying "connection refused" by now
        controller = ["pxgrpc.controller", "--port", str(port), "--file", str(conn), "--engine-token", token]
        with spawned(controller) as proc:
            wait_for_connection_file(conn, proc)
            with ipp.Client(conn, timeout=5) as rc:
                wait_for_engines(rc, 1)
                assert engine_proc.poll() is None


# --------------------------------------------------------------------------- wrong token


def test_wrong_token_client(tls_cluster: Cluster) -> None:
    bad = dataclasses.replace(info_of(tls_cluster), token="not-the-token")
    with pytest.raises(ipp.AuthenticationError) as err:
        ipp.Client(connection_info=bad, timeout=5)
    assert err.value.cause == diagnose.FailureCause.WRONG_TOKEN
    assert_one_line(err.value, "refused our credentials: invalid token", "Fix:", "controller.json")


def test_wrong_token_engine(tls_cluster: Cluster, tmp_path: pathlib.Path) -> None:
    bad = dataclasses.replace(info_of(tls_cluster).for_engines(), engine_token="not-the-token")
    path = write_private(tmp_path / "bad" / "controller-engine.json", bad)
    result = run_cli("pxgrpc-engine", "--file", str(path))
    assert_engine_refused(result, "refused our credentials: invalid token", "controller-engine.json")


# --------------------------------------------------------------------------- untrusted certificate


def test_untrusted_certificate_client(tls_cluster: Cluster, other_ca: trustme.CA) -> None:
    bad = dataclasses.replace(info_of(tls_cluster), tls_ca=other_ca.cert_pem.bytes().decode())
    with pytest.raises(ipp.TLSError) as err:
        ipp.Client(connection_info=bad, timeout=5)
    assert err.value.cause == diagnose.FailureCause.UNTRUSTED_CERTIFICATE
    assert_one_line(err.value, "not signed by the CA we were given", "issued by 'pxgrpc CA", "Fix:")


def test_untrusted_certificate_engine(
    tls_cluster: Cluster, other_ca: trustme.CA, tmp_path: pathlib.Path
) -> None:
    info = info_of(tls_cluster)
    ca = write_pem(tmp_path / "other-ca.pem", other_ca.cert_pem.bytes())
    result = run_cli(
        "pxgrpc-engine", "--controller", info.url, "--token", info.engine_token, "--tls-ca", str(ca)
    )
    assert_engine_refused(result, "not signed by the CA we were given", "--tls-ca")


# --------------------------------------------------------------------------- plaintext vs TLS


def test_plaintext_client_against_tls_port(tls_cluster: Cluster) -> None:
    bad = dataclasses.replace(info_of(tls_cluster), tls=False, tls_ca=None)
    with pytest.raises(ipp.TLSError) as err:
        ipp.Client(connection_info=bad, timeout=5)
    assert err.value.cause == diagnose.FailureCause.PLAINTEXT_TO_TLS
    assert_one_line(err.value, "speaks TLS but we connected without TLS", "Fix:")


def test_plaintext_engine_against_tls_port(tls_cluster: Cluster) -> None:
    info = info_of(tls_cluster)
    result = run_cli("pxgrpc-engine", "--controller", info.url, "--token", info.engine_token)
    assert_engine_refused(result, "speaks TLS but we connected without TLS", "--tls-ca")


def test_tls_client_against_plaintext_port(plain_cluster: Cluster, other_ca: trustme.CA) -> None:
    bad = dataclasses.replace(info_of(plain_cluster), tls_ca=other_ca.cert_pem.bytes().decode())
    with pytest.raises(ipp.TLSError) as err:
        ipp.Client(connection_info=bad, timeout=5)
    assert err.value.cause == diagnose.FailureCause.TLS_TO_PLAINTEXT
    assert_one_line(err.value, "does not speak TLS", "--tls auto")


def test_tls_engine_against_plaintext_port(
    plain_cluster: Cluster, other_ca: trustme.CA, tmp_path: pathlib.Path
) -> None:
    info = info_of(plain_cluster)
    ca = write_pem(tmp_path / "ca.pem", other_ca.cert_pem.bytes())
    result = run_cli(
        "pxgrpc-engine", "--controller", info.url, "--token", info.engine_token, "--tls-ca", str(ca)
    )
    assert_engine_refused(result, "does not speak TLS", "--tls auto")


# --------------------------------------------------------------------------- expired, wrong name


@pytest.fixture(scope="module")
def expired_server(other_ca: trustme.CA) -> Iterator[str]:
    leaf = other_ca.issue_cert(
        "127.0.0.1", not_before=datetime.datetime(2020, 1, 1), not_after=datetime.datetime(2021, 1, 1)
    )
    with bare_server(server_credentials(trustme_pair(leaf))) as url:
        yield url


@pytest.fixture(scope="module")
def misnamed_server(other_ca: trustme.CA) -> Iterator[str]:
    leaf = other_ca.issue_cert("head.example.org")
    with bare_server(server_credentials(trustme_pair(leaf))) as url:
        yield url


def _trusting(url: str, ca: trustme.CA) -> ConnectionInfo:
    return ConnectionInfo(url=url, token="t", engine_token="e", tls_ca=ca.cert_pem.bytes().decode())


def test_expired_certificate_client(expired_server: str, other_ca: trustme.CA) -> None:
    with pytest.raises(ipp.TLSError) as err:
        ipp.Client(connection_info=_trusting(expired_server, other_ca), timeout=5)
    assert err.value.cause == diagnose.FailureCause.EXPIRED_CERTIFICATE
    assert_one_line(err.value, "expired", "2021-01-01", "Fix:", "--tls auto")


def test_expired_certificate_engine(
    expired_server: str, other_ca: trustme.CA, tmp_path: pathlib.Path
) -> None:
    path = write_private(tmp_path / "e" / "controller-engine.json", _trusting(expired_server, other_ca))
    result = run_cli("pxgrpc-engine", "--file", str(path))
    assert_engine_refused(result, "expired", "2021-01-01")


def test_hostname_mismatch_client(misnamed_server: str, other_ca: trustme.CA) -> None:
    with pytest.raises(ipp.TLSError) as err:
        ipp.Client(connection_info=_trusting(misnamed_server, other_ca), timeout=5)
    assert err.value.cause == diagnose.FailureCause.HOSTNAME_MISMATCH
    assert_one_line(
        err.value, "not valid for the name '127.0.0.1'", "it names head.example.org", "tls_server_name"
    )


def test_hostname_mismatch_engine(misnamed_server: str, other_ca: trustme.CA, tmp_path: pathlib.Path) -> None:
    path = write_private(tmp_path / "h" / "controller-engine.json", _trusting(misnamed_server, other_ca))
    result = run_cli("pxgrpc-engine", "--file", str(path))
    assert_engine_refused(result, "not valid for the name '127.0.0.1'", "--tls-server-name")


def test_server_name_override_fixes_the_mismatch(misnamed_server: str, other_ca: trustme.CA) -> None:
    info = _trusting(misnamed_server, other_ca)
    # The handshake now succeeds; the bare server has no pxgrpc services, so the call is UNIMPLEMENTED.
    with pytest.raises(ipp.PxConnectionError) as err:
        ipp.Client(connection_info=info, tls_server_name="head.example.org", timeout=5)
    assert not isinstance(err.value, ipp.TLSError)
    assert err.value.code == "UNIMPLEMENTED"


# --------------------------------------------------------------------------- client certificates


def test_missing_client_certificate_client(mtls_cluster: Cluster) -> None:
    bad = dataclasses.replace(info_of(mtls_cluster), tls_client_cert=None, tls_client_key=None)
    with pytest.raises(ipp.AuthenticationError) as err:
        ipp.Client(connection_info=bad, timeout=5)
    assert err.value.cause == diagnose.FailureCause.CLIENT_CERT_REQUIRED
    assert_one_line(
        err.value, "requires a client certificate (mutual TLS) and we presented none", "tls_cert="
    )


def test_missing_client_certificate_engine(mtls_cluster: Cluster, tmp_path: pathlib.Path) -> None:
    engine_info = read_connection_file(engine_connection_file(mtls_cluster.connection_file))
    bad = dataclasses.replace(engine_info, tls_client_cert=None, tls_client_key=None)
    path = write_private(tmp_path / "m" / "controller-engine.json", bad)
    result = run_cli("pxgrpc-engine", "--file", str(path))
    assert_engine_refused(result, "requires a client certificate", "--tls-cert")


def test_foreign_client_certificate_client(
    mtls_cluster: Cluster, other_ca: trustme.CA, tmp_path: pathlib.Path
) -> None:
    leaf = other_ca.issue_cert("mallory@example.org")
    cert = write_pem(tmp_path / "mallory.pem", leaf.cert_chain_pems[0].bytes())
    key = write_pem(tmp_path / "mallory-key.pem", leaf.private_key_pem.bytes())
    with pytest.raises(ipp.AuthenticationError) as err:
        ipp.Client(mtls_cluster.connection_file, tls_cert=cert, tls_key=key, timeout=5)
    assert err.value.cause == diagnose.FailureCause.CLIENT_CERT_REJECTED
    assert_one_line(err.value, "not by the controller's CA", "Fix:")


def test_foreign_client_certificate_engine(
    mtls_cluster: Cluster, other_ca: trustme.CA, tmp_path: pathlib.Path
) -> None:
    leaf = other_ca.issue_cert("mallory@example.org")
    cert = write_pem(tmp_path / "mallory.pem", leaf.cert_chain_pems[0].bytes())
    key = write_pem(tmp_path / "mallory-key.pem", leaf.private_key_pem.bytes())
    engine_file = engine_connection_file(mtls_cluster.connection_file)
    result = run_cli(
        "pxgrpc-engine", "--file", str(engine_file), "--tls-cert", str(cert), "--tls-key", str(key)
    )
    assert_engine_refused(result, "not by the controller's CA", "--tls-cert")


def test_expired_client_certificate_is_refused_before_connecting(tmp_path: pathlib.Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert(
        "old", not_before=datetime.datetime(2020, 1, 1), not_after=datetime.datetime(2021, 1, 1)
    )
    cert = write_pem(tmp_path / "old.pem", leaf.cert_chain_pems[0].bytes())
    key = write_pem(tmp_path / "old-key.pem", leaf.private_key_pem.bytes())
    info = ConnectionInfo(url="127.0.0.1:1", token="t", engine_token="e")
    with pytest.raises(SecurityError, match=r"expired on 2021-01-01.*pxgrpc tls"):
        ipp.Client(connection_info=info, tls_cert=cert, tls_key=key)
    result = run_cli(
        "pxgrpc-engine",
        "--controller",
        "127.0.0.1:1",
        "--token",
        "e",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
    )
    assert result.returncode != 0 and "expired on 2021-01-01" in last_line(result.stderr)


# --------------------------------------------------------------------------- unreachable, files, flags


def test_unreachable_controller_engine_gives_up_in_time() -> None:
    result = run_cli("pxgrpc-engine", "--controller", "127.0.0.1:1", "--token", "e", "--timeout", "1")
    assert_engine_refused(result, "cannot reach the controller at 127.0.0.1:1", "Connection refused")


def test_readable_connection_file_is_refused_by_the_tools(
    tls_cluster: Cluster, tmp_path: pathlib.Path
) -> None:
    path = write_private(tmp_path / "open" / "controller.json", info_of(tls_cluster))
    os.chmod(path, 0o644)
    result = run_cli("pxgrpc-engine", "--file", str(path))
    line = assert_engine_refused(result, "accessible by other users", f"chmod 600 {path}")
    assert "mode 0644" in line
    with pytest.raises(SecurityError, match="chmod 600"):
        ipp.Client(path)
    home = tmp_path / "open-home"
    write_private(home / "controller.json", info_of(tls_cluster))
    os.chmod(home / "controller.json", 0o640)
    status = subprocess.run(
        [sys.executable, "-m", "pxgrpc.cli", "cluster", "status"],
        capture_output=True,
        text=True,
        timeout=PROC_TIMEOUT,
        env={**os.environ, "PXGRPC_DIR": str(home)},
    )
    assert status.returncode != 0 and "chmod 600" in status.stderr


def test_controller_refuses_a_public_address_without_tls(tmp_path: pathlib.Path) -> None:
    result = run_cli("pxgrpc-controller", "--ip", "0.0.0.0", "--file", str(tmp_path / "c.json"))
    assert result.returncode == 2
    line = last_line(result.stderr)
    assert (
        "refusing to listen on '0.0.0.0' without TLS" in line
        and "--tls auto" in line
        and "--insecure" in line
    )
    assert not (tmp_path / "c.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tls-client-auth"], "--tls-client-auth needs TLS"),
        (["--tls-cert", "missing.pem", "--tls-key", "missing-key.pem"], "does not exist"),
        (["--tls-cert", "{pki}/server.pem"], "needs both --tls-cert and --tls-key"),
        (
            ["--tls-cert", "{pki}/server.pem", "--tls-key", "{pki}/alice-key.pem"],
            "does not belong to certificate",
        ),
        (
            ["--tls-cert", "{pki}/server.pem", "--tls-key", "{pki}/server-key.pem", "--tls-client-auth"],
            "--tls-client-auth needs --tls-ca",
        ),
        (["--tls", "auto", "--tls-cert", "{pki}/server.pem"], "--tls auto makes its own certificate"),
        (["--tls-cert", "{pki}/old.pem", "--tls-key", "{pki}/old-key.pem"], "expired on 2021-01-01"),
    ],
)
def test_controller_tls_flag_mistakes(args: list[str], message: str, tmp_path: pathlib.Path) -> None:
    pki = tmp_path / "pki"
    ca = certs.make_ca()
    pki.mkdir()
    server = certs.make_server_cert(ca, ["127.0.0.1"])
    write_pem(pki / "server.pem", server.cert_pem)
    write_pem(pki / "server-key.pem", server.key_pem)
    write_pem(pki / "alice-key.pem", certs.make_client_cert(ca, "alice").key_pem)
    old = trustme.CA().issue_cert(
        "127.0.0.1", not_after=datetime.datetime(2021, 1, 1), not_before=datetime.datetime(2020, 1, 1)
    )
    write_pem(pki / "old.pem", old.cert_chain_pems[0].bytes())
    write_pem(pki / "old-key.pem", old.private_key_pem.bytes())
    argv = [a.format(pki=pki) for a in args]
    result = run_cli("pxgrpc-controller", "--file", str(tmp_path / "c.json"), *argv)
    assert result.returncode == 2
    assert message in last_line(result.stderr)
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- classification


@pytest.mark.parametrize(
    ("details", "tls", "cause"),
    [
        (
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:10.0.0.5:5000: "
            "Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: "
            "error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: "
            "unable to get local issuer certificate: OK",
            True,
            "untrusted-certificate",
        ),
        ("... CERTIFICATE_VERIFY_FAILED: certificate has expired: OK", True, "expired-certificate"),
        ("... Ssl handshake failed: SSL_ERROR_SSL: ...:WRONG_VERSION_NUMBER", True, "tls-to-plaintext"),
        (
            "... Custom verification check failed with error: UNAUTHENTICATED: "
            "Hostname Verification Check failed.",
            True,
            "hostname-mismatch",
        ),
        ("... Peer name 10.0.0.5 is not in peer certificate", True, "hostname-mismatch"),
        ("... ipv4:10.0.0.5:5000: Socket closed", True, "client-certificate-required"),
        ("... SSLV3_ALERT_BAD_CERTIFICATE", True, "client-certificate-required"),
        ("... Failed to connect to remote host: Connection refused", False, "unreachable"),
        ("... Failed to connect to remote host: No route to host", True, "unreachable"),
        ("DNS resolution failed for nohost:1: C-ares status is not ARES_SUCCESS", False, "unreachable"),
    ],
)
def test_grpc_failures_are_classified(details: str, tls: bool, cause: str) -> None:
    target = diagnose.ConnectTarget(url="10.0.0.5:5000", tls=tls, role="client")
    found = diagnose.diagnose(grpc.StatusCode.UNAVAILABLE, details, target, probe=False)
    assert found.cause == cause
    assert "\n" not in found.message and "Fix:" in found.message
    assert "failed to connect to all addresses" not in found.message


def test_short_drops_grpc_boilerplate() -> None:
    text = (
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
        "Failed to connect to remote host: Connection refused"
    )
    assert diagnose.short(text) == "Failed to connect to remote host: Connection refused"
