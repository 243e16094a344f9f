"""The direct data path on TLS clusters: with `--tls auto` the controller signs each engine's data
endpoint certificate at registration, and large arguments and results travel straight between
client and engine over TLS, with the same token and client-certificate checks as the controller.
"""

from __future__ import annotations

import hashlib
import pathlib
import ssl
import time
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from cryptography import x509
from test_datapath import MB, _forbid_relay
from test_tls import running_cluster, spawned, wait_for_connection_file, write_pem

import pxgrpc as ipp
from pxgrpc import wire
from pxgrpc.addresses import split_url
from pxgrpc.cluster import Cluster
from pxgrpc.security import certs
from pxgrpc.security.connection_file import ConnectionInfo, engine_connection_file, read_connection_file
from pxgrpc.security.credentials import channel_credentials, channel_options
from pxgrpc.security.tokens import auth_metadata

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def tls_cluster() -> Iterator[Cluster]:
    """A `--tls auto` controller with two engines (no client certificates)."""
    with running_cluster(2, "--tls", "auto") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def mtls_cluster() -> Iterator[Cluster]:
    """A `--tls auto --tls-client-auth` controller with two engines."""
    with running_cluster(2, "--tls", "auto", "--tls-client-auth") as cluster:
        yield cluster


def _info(cluster: Cluster) -> ConnectionInfo:
    return read_connection_file(cluster.connection_file)


def _client(cluster: Cluster) -> ipp.Client:
    rc = ipp.Client(cluster.connection_file, timeout=10)
    rc.wait_for_engines(2, timeout=30)
    return rc


@pytest.mark.parametrize("which", ["tls_cluster", "mtls_cluster"])
def test_tls_engines_offer_a_data_endpoint_and_large_data_goes_straight_there(
    which: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster: Cluster = request.getfixturevalue(which)
    with _client(cluster) as rc:
        urls = [e["data_url"] for e in rc.engines]
        assert all(url.startswith("127.0.0.1:") for url in urls) and len(set(urls)) == 2
        _forbid_relay(rc, monkeypatch)
        data = np.random.default_rng(4).random(32 * MB // 8)
        rc[0].push({"a": data}, block=True)
        assert np.array_equal(rc[0].pull("a", block=True), data)
        for engine_id in rc.ids:
            rc[engine_id].push({"b": data[: 4 * MB // 8]}, block=True)
        assert all(np.array_equal(b, data[: 4 * MB // 8]) for b in rc[:].pull("b", block=True))
        assert not rc._transport._datapath._broken
        # A broadcast goes up once, through the controller, on a TLS cluster too.
        monkeypatch.undo()
        rc[:].push({"c": data[: 2 * MB // 8]}, block=True)
        assert all(np.array_equal(c, data[: 2 * MB // 8]) for c in rc[:].pull("c", block=True))


def test_the_data_certificate_is_signed_by_the_cluster_ca_for_the_engine_host_only(
    tls_cluster: Cluster,
) -> None:
    info = _info(tls_cluster)
    with _client(tls_cluster) as rc:
        host, port = split_url(rc.engines[0]["data_url"])
    pem = ssl.get_server_certificate((host, port), ca_certs=None, timeout=10)
    cert = x509.load_pem_x509_certificate(pem.encode())
    ca = x509.load_pem_x509_certificate((info.tls_ca or "").encode())
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == [host]
    assert san.get_values_for_type(x509.DNSName) == []


def _data_call(url: str, credentials: grpc.ChannelCredentials | None, token: str) -> grpc.RpcError:
    """Ask the data endpoint at `url` for a blob it does not hold; return its answer."""
    options = channel_options(None)
    if credentials is None:
        channel = grpc.insecure_channel(url, options=options)
    else:
        channel = grpc.secure_channel(url, credentials, options=options)
    with channel:
        download = channel.unary_stream(
            f"/{wire.ENGINE_DATA_SERVICE}/Download",
            request_serializer=wire.pb.DownloadRequest.SerializeToString,
        )
        request = wire.pb.DownloadRequest(blob_id="nothing-here")
        call = download(request, metadata=auth_metadata(token), timeout=10)
        with pytest.raises(grpc.RpcError) as caught:
            list(call)
    return caught.value


def test_the_tls_data_endpoint_refuses_plaintext_missing_client_certs_and_wrong_tokens(
    mtls_cluster: Cluster,
) -> None:
    info = _info(mtls_cluster)
    ca = (info.tls_ca or "").encode()
    with _client(mtls_cluster) as rc:
        url = rc.engines[0]["data_url"]
        plaintext = _data_call(url, None, info.token)
        assert plaintext.code() == grpc.StatusCode.UNAVAILABLE
        no_client_cert = _data_call(url, channel_credentials(ca), info.token)
        assert no_client_cert.code() == grpc.StatusCode.UNAVAILABLE
        foreign = certs.make_client_cert(certs.make_ca("someone else"), "mallory")
        foreign_cert = _data_call(url, channel_credentials(ca, foreign), info.token)
        assert foreign_cert.code() == grpc.StatusCode.UNAVAILABLE
        wrong_token = _data_call(url, info.channel_credentials(), info.engine_token)
        assert wrong_token.code() == grpc.StatusCode.UNAUTHENTICATED
        allowed = _data_call(url, info.channel_credentials(), info.token)
        assert allowed.code() == grpc.StatusCode.NOT_FOUND  # through to the service itself
        assert rc[0].apply_sync(lambda: 41 + 1) == 42
        rc[0].push({"a": np.arange(4 * MB)}, block=True)
        assert not rc._transport._datapath._broken


# --------------------------------------------------------------------------- registration


def _register(info: ConnectionInfo, request: wire.pb.RegisterRequest) -> tuple[grpc.StatusCode, Any]:
    """Call Engine/Register as an engine would (raw gRPC); return the status and reply/details."""
    credentials = info.channel_credentials()
    assert credentials is not None
    options = channel_options(info.tls_server_name)
    with grpc.secure_channel(info.url, credentials, options=options) as channel:
        register = channel.unary_unary(
            f"/{wire.ENGINE_SERVICE}/Register",
            request_serializer=wire.pb.RegisterRequest.SerializeToString,
            response_deserializer=wire.pb.RegisterReply.FromString,
        )
        try:
            reply = register(request, metadata=auth_metadata(info.engine_token), timeout=10)
        except grpc.RpcError as exc:
            return exc.code(), exc.details()
    return grpc.StatusCode.OK, reply


def _csr_request(csr: bytes, token: str) -> wire.pb.RegisterRequest:
    return wire.pb.RegisterRequest(
        hostname="h", pid=1, data_url="127.0.0.1:5", data_csr_pem=csr, data_csr_mac=certs.csr_mac(csr, token)
    )


def test_registration_refuses_a_csr_for_another_host_or_a_malformed_one(tls_cluster: Cluster) -> None:
    info = _info(tls_cluster)
    other_host, _ = certs.make_csr("10.9.8.7")
    for csr, phrase in ((other_host, "'10.9.8.7'"), (b"not a csr", "not a PEM certificate signing request")):
        code, details = _register(info, _csr_request(csr, info.token))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith("data_csr_pem: ") and phrase in details
    csr, _ = certs.make_csr("127.0.0.1")
    for token in ("", info.engine_token):  # an engine without the client token gets no certificate
        code, details = _register(info, _csr_request(csr, token))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert details.startswith("data_csr_mac: ") and "controller.json" in details
    code, reply = _register(info, _csr_request(csr, info.token))
    assert code == grpc.StatusCode.OK
    cert = x509.load_pem_x509_certificate(reply.data_cert_pem)
    assert cert.public_key() == x509.load_pem_x509_csr(csr).public_key()
    code, reply = _register(info, wire.pb.RegisterRequest(hostname="h", pid=1, data_url="127.0.0.1:5"))
    assert code == grpc.StatusCode.OK and reply.data_cert_pem == b""  # no request, no endpoint
    with _client(tls_cluster) as rc:
        assert rc[:].apply_sync(lambda: "still here") == ["still here"] * 2
        assert all(e["data_url"] for e in rc.engines)


def test_engines_of_a_controller_with_your_own_certificate_use_the_relay(tmp_path: pathlib.Path) -> None:
    ca = certs.make_ca("my CA")
    server = certs.make_server_cert(ca, ["127.0.0.1"])
    conn = tmp_path / "controller.json"
    controller = [
        "pxgrpc.controller",
        "--file",
        str(conn),
        "--tls-cert",
        str(write_pem(tmp_path / "server.pem", server.cert_pem)),
        "--tls-key",
        str(write_pem(tmp_path / "server-key.pem", server.key_pem)),
        "--tls-ca",
        str(write_pem(tmp_path / "ca.pem", ca.cert_pem)),
    ]
    with spawned(controller) as proc:
        wait_for_connection_file(conn, proc)
        with spawned(["pxgrpc.engine", "--file", str(conn)]), ipp.Client(conn, timeout=10) as rc:
            rc.wait_for_engines(1, timeout=30)
            assert rc.engines[0]["data_url"] == ""  # the controller cannot sign: nothing published
            data = np.random.default_rng(5).random(2 * MB)
            rc[0].push({"a": data}, block=True)
            assert np.array_equal(rc[0].pull("a", block=True), data)


@pytest.mark.parametrize("data_host", [[], ["--data-host", "127.0.0.2"]], ids=["default", "other-host"])
def test_an_engine_from_the_engine_only_file_next_to_the_controller_uses_the_relay(
    tls_cluster: Cluster, data_host: list[str]
) -> None:
    """Without the client token the controller signs only for the address the engine registers
    from, never its own: an engine-only engine on the controller's host gets no certificate (on
    other hosts it does: see test_multihost). Asked for another address (--data-host), the
    controller refuses it, and the engine registers again without an endpoint."""
    engine_file = engine_connection_file(tls_cluster.connection_file)
    engine = ["pxgrpc.engine", "--file", str(engine_file), *data_host]
    with _client(tls_cluster) as rc:
        before = set(rc.ids)
        with spawned(engine):
            deadline = time.monotonic() + 30
            while not (new := [e for e in rc.engines if e["id"] not in before]):
                assert time.monotonic() < deadline, "the engine did not register"
                time.sleep(0.05)
            newest = new[0]
            assert newest["data_url"] == ""
            data = np.random.default_rng(9).random(2 * MB)
            rc[newest["id"]].push({"a": data}, block=True)
            assert np.array_equal(rc[newest["id"]].pull("a", block=True), data)


def test_registration_without_the_client_token_gets_no_certificate_for_another_host_or_the_controller(
    tls_cluster: Cluster,
) -> None:
    info = _info(tls_cluster)
    other, _ = certs.make_csr("10.9.8.7")
    request = wire.pb.RegisterRequest(hostname="h", pid=1, data_url="10.9.8.7:5", data_csr_pem=other)
    code, details = _register(info, request)  # no data_csr_mac: only for the caller's address
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert details.startswith("data_url: ") and "'10.9.8.7'" in details and "'127.0.0.1'" in details
    own, _ = certs.make_csr("127.0.0.1")
    request = wire.pb.RegisterRequest(hostname="h", pid=1, data_url="127.0.0.1:5", data_csr_pem=own)
    code, reply = _register(info, request)  # the caller's address, but the controller's too
    assert code == grpc.StatusCode.OK
    assert reply.data_cert_pem == b"" and reply.client_token_sha256 == b""
    code, reply = _register(info, _csr_request(own, info.token))  # with the client token: signed
    assert code == grpc.StatusCode.OK and reply.data_cert_pem
    assert reply.client_token_sha256 == hashlib.sha256(info.token.encode()).digest()
