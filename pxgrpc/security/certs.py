"""X.509 certificate material for pxgrpc's TLS: a small CA and the certificates it signs.

:func:`make_ca` creates a self-signed certificate authority; :func:`make_server_cert` and
:func:`make_client_cert` issue leaf certificates from it, for a controller (valid for the hosts
it is reached at, plus this machine) and for clients and engines doing mutual TLS. Each comes
back as a :class:`CertKey`, a PEM certificate with its PEM private key. New keys are ECDSA P-256;
a CA you bring may also hold an RSA or Ed25519/Ed448 key.

``controller --tls auto`` mints a fresh CA and certificates in memory with these functions, and
``pxgrpc tls ...`` (:mod:`pxgrpc.security.certfiles`) writes them to files. Turning a
:class:`CertKey` into gRPC credentials is :mod:`pxgrpc.security.credentials`' job.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pxgrpc.addresses import normal_host
from pxgrpc.security.errors import SecurityError


@dataclass
class CertKey:
    """A PEM certificate (or chain) and its PEM private key."""

    cert_pem: bytes
    key_pem: bytes


_SigningKey = (
    ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey
)


_SIGNING_KEY_TYPES = (
    ec.EllipticCurvePrivateKey,
    rsa.RSAPrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: _SigningKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pxgrpc"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64] or "pxgrpc"),
        ]
    )


def _builder(subject: x509.Name, issuer: x509.Name, public_key: Any, days: int) -> x509.CertificateBuilder:
    if days <= 0:
        raise ValueError(f"certificate validity must be positive, got {days} days")
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _sign(builder: x509.CertificateBuilder, key: _SigningKey) -> bytes:
    edwards = isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey))
    algorithm = None if edwards else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)


def make_ca(common_name: str = "pxgrpc CA", days: int = 3650) -> CertKey:
    """Create a self-signed certificate authority able to sign server and client certificates."""
    key = _new_key()
    name = _name(common_name)
    builder = (
        _builder(name, name, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
    )
    return CertKey(_sign(builder, key), _key_pem(key))


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _load_ca(ca: CertKey) -> tuple[x509.Certificate, _SigningKey]:
    cert = x509.load_pem_x509_certificate(ca.cert_pem)
    key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(key, _SIGNING_KEY_TYPES):
        raise SecurityError(f"unsupported CA key type {type(key).__name__}; use an EC, RSA or Ed25519 CA key")
    return cert, key


_Leaf = tuple[x509.CertificateBuilder, ec.EllipticCurvePrivateKey, _SigningKey]


def _leaf(ca: CertKey, common_name: str, days: int, usage: x509.ObjectIdentifier) -> _Leaf:
    ca_cert, ca_key = _load_ca(ca)
    key = _new_key()
    builder = (
        _builder(_name(common_name), ca_cert.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    return builder, key, ca_key


def _server_hosts(hosts: Iterable[str]) -> list[str]:
    extra = ["localhost", "127.0.0.1", "::1", socket.gethostname()]
    result: list[str] = []
    for host in [*hosts, *extra]:
        name = host.strip().strip("[]")
        if name and name not in result:
            result.append(name)
    return result


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host.encode("idna").decode("ascii"))


def make_server_cert(ca: CertKey, hosts: list[str], days: int = 825) -> CertKey:
    """Create a server certificate signed by ``ca`` valid for ``hosts`` and this machine.

    Besides ``hosts`` the certificate names localhost, 127.0.0.1, ::1 and the host name.
    """
    names = _server_hosts(hosts)
    builder, key, ca_key = _leaf(ca, names[0], days, ExtendedKeyUsageOID.SERVER_AUTH)
    builder = builder.add_extension(x509.SubjectAlternativeName([_san(h) for h in names]), critical=False)
    return CertKey(_sign(builder, ca_key), _key_pem(key))


def make_client_cert(ca: CertKey, common_name: str, days: int = 825) -> CertKey:
    """Create a client certificate signed by ``ca`` for mutual TLS."""
    builder, key, ca_key = _leaf(ca, common_name, days, ExtendedKeyUsageOID.CLIENT_AUTH)
    return CertKey(_sign(builder, ca_key), _key_pem(key))


# --------------------------------------------------------------------------- engines' data endpoints


class CsrError(ValueError):
    """A certificate signing request that cannot be signed (the message says why)."""


def make_csr(host: str) -> tuple[bytes, bytes]:
    """A new private key and a certificate signing request for a server at ``host``.

    Returns ``(csr_pem, key_pem)``: the key stays with the caller; the request goes to whoever
    holds the CA (see :func:`sign_server_csr`).
    """
    key = _new_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_name(host))
        .add_extension(x509.SubjectAlternativeName([_san(host)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def csr_mac(csr_pem: bytes, token: str) -> bytes:
    """Proof that whoever sent ``csr_pem`` holds ``token`` (HMAC-SHA256 keyed with it)."""
    return hmac.new(token.encode(), csr_pem, hashlib.sha256).digest()


def sign_server_csr(ca: CertKey, csr_pem: bytes, host: str, days: int = 825) -> bytes:
    """A server certificate (PEM) signed by ``ca`` for the key of ``csr_pem``, valid for ``host``
    only.

    The request must be signed by its own key and name no host but ``host`` (in its subject
    alternative names, if it has any); otherwise :class:`CsrError`. Only the request's public key
    is taken: the subject, names and usages are set here.
    """
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise CsrError(f"not a PEM certificate signing request ({exc})") from None
    if not csr.is_signature_valid:
        raise CsrError("the request is not signed by the key it carries")
    names = [normal_host(h) for h in _csr_hosts(csr)]
    wanted = normal_host(host)
    if names not in ([wanted], []):
        raise CsrError(f"the request names {names}, but the endpoint is at {wanted!r} (one host, that one)")
    public_key = csr.public_key()
    if not isinstance(public_key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey, ed25519.Ed25519PublicKey)):
        raise CsrError(f"unsupported key type {type(public_key).__name__}; use an EC, RSA or Ed25519 key")
    ca_cert, ca_key = _load_ca(ca)
    builder = (
        _builder(_name(wanted), ca_cert.subject, public_key, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .add_extension(x509.SubjectAlternativeName([_san(wanted)]), critical=False)
    )
    return _sign(builder, ca_key)


def _csr_hosts(csr: x509.CertificateSigningRequest) -> list[str]:
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    except ValueError as exc:
        raise CsrError(f"unreadable extensions ({exc})") from None
    hosts: list[str] = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    hosts += san.get_values_for_type(x509.DNSName)
    if len(hosts) != len(san):
        raise CsrError("the request names something other than a DNS name or IP address")
    return hosts
