"""Tests for pxgrpc.certs: the small CA and the server and client certificates it signs."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from pxgrpc import certs
from pxgrpc.certs import CertKey

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
