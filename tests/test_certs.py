"""Tests for pxgrpc.security.certs: the small CA and the server and client certificates it signs."""

from __future__ import annotations

import ipaddress
import re
import socket

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from pxgrpc.security import certs
from pxgrpc.security.certs import CertKey

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def ca() -> CertKey:
    return certs.make_ca()


def _sans(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = [str(ip) for ip in ext.get_values_for_type(x509.IPAddress)]
    return ext.get_values_for_type(x509.DNSName), ips


def test_server_cert_sans_and_chain(ca: CertKey) -> None:
    leaf = certs.make_server_cert(ca, ["example.org", "10.1.2.3", "[fe80::1]"], days=30)
    cert = x509.load_pem_x509_certificate(leaf.cert_pem)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    dns, ips = _sans(cert)
    assert {"example.org", "localhost", socket.gethostname()} <= set(dns)
    assert {"10.1.2.3", "fe80::1", "127.0.0.1", "::1"} <= set(ips)
    assert all(ipaddress.ip_address(ip) for ip in ips)
    cert.verify_directly_issued_by(ca_cert)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 30 <= lifetime.days <= 31
    assert b"PRIVATE KEY" in leaf.key_pem


def test_ca_and_client_cert(ca: CertKey) -> None:
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    basic = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca
    client = x509.load_pem_x509_certificate(certs.make_client_cert(ca, "alice").cert_pem)
    client.verify_directly_issued_by(ca_cert)
    eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert "alice" in client.subject.rfc4514_string()


def test_a_csr_is_signed_for_its_host_only_with_the_requesters_key(ca: CertKey) -> None:
    csr, key_pem = certs.make_csr("10.1.2.3")
    cert = x509.load_pem_x509_certificate(certs.sign_server_csr(ca, csr, "10.1.2.3"))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.IPAddress(ipaddress.ip_address("10.1.2.3"))]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.public_key() == x509.load_pem_x509_csr(csr).public_key()
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert_pem))
    assert b"PRIVATE KEY" in key_pem
    v6, _ = certs.make_csr("fd00::0:1")
    assert certs.sign_server_csr(ca, v6, "[fd00::1]")  # the same address, written differently


@pytest.mark.parametrize(
    ("csr_host", "endpoint_host", "phrase"),
    [
        ("10.1.2.3", "10.1.2.4", "names ['10.1.2.3'], but the endpoint is at '10.1.2.4'"),
        ("engine.example", "10.1.2.3", "names ['engine.example']"),
    ],
)
def test_a_csr_for_another_host_is_refused(
    ca: CertKey, csr_host: str, endpoint_host: str, phrase: str
) -> None:
    csr, _ = certs.make_csr(csr_host)
    with pytest.raises(certs.CsrError, match=re.escape(phrase)):
        certs.sign_server_csr(ca, csr, endpoint_host)


def test_a_malformed_csr_is_refused(ca: CertKey) -> None:
    with pytest.raises(certs.CsrError, match="not a PEM certificate signing request"):
        certs.sign_server_csr(ca, b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END", "10.1.2.3")
