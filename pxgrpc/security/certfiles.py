"""TLS certificate files: load and check them, and issue new ones (`pxgrpc tls ...`).

A controller run with certificates you bring (``--tls-cert/--tls-key/--tls-ca``) and engines or
clients presenting client certificates (mutual TLS) read PEM files. This module loads them with
errors that name the file and the fix (missing file, key not matching the certificate, expired
certificate), and issues certificates from a small file-based CA for people without a PKI:

    pxgrpc tls ca --dir pki                                    # pki/ca.pem, pki/ca-key.pem
    pxgrpc tls server --dir pki --host 10.0.0.5 --host head    # pki/server.pem, pki/server-key.pem
    pxgrpc tls client --dir pki --name engine                  # pki/engine.pem, pki/engine-key.pem
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import os
import pathlib

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from pxgrpc.security import certs
from pxgrpc.security.certs import CertKey
from pxgrpc.security.connection_file import ConnectionInfo
from pxgrpc.security.errors import SecurityError

logger = logging.getLogger(__name__)

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"


# --------------------------------------------------------------------------- reading and checking


def read_pem(path: str | os.PathLike[str], what: str) -> bytes:
    """Read a PEM file, or raise SecurityError naming ``what`` (e.g. '--tls-ca') and the path."""
    path = pathlib.Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SecurityError(f"{what} file {path} does not exist; check the path") from None
    except OSError as exc:
        raise SecurityError(f"cannot read {what} file {path}: {exc.strerror}") from None
    if b"-----BEGIN" not in data:
        raise SecurityError(f"{what} file {path} is not PEM (no '-----BEGIN' line); give a PEM file")
    return data


def load_certificate(pem: bytes, what: str) -> x509.Certificate:
    """Parse the first certificate of a PEM blob, or raise SecurityError naming ``what``."""
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise SecurityError(f"{what} does not hold a valid PEM certificate ({exc})") from None


def check_validity(cert: x509.Certificate, what: str, fix: str) -> None:
    """Raise SecurityError when ``cert`` has expired or is not valid yet."""
    now = datetime.datetime.now(datetime.UTC)
    if cert.not_valid_after_utc < now:
        raise SecurityError(f"{what} expired on {format_utc(cert.not_valid_after_utc)}; {fix}")
    if cert.not_valid_before_utc > now:
        raise SecurityError(
            f"{what} is not valid before {format_utc(cert.not_valid_before_utc)}; "
            f"check this machine's clock, or {fix}"
        )


def format_utc(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def load_cert_pair(cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str], flag: str) -> CertKey:
    """Load a certificate and its private key, checking that they belong together and are valid.

    ``flag`` is how the user named them (``--tls-cert``, ``tls_cert=``), used in messages.
    """
    cert_pem = read_pem(cert_path, f"{flag} certificate")
    key_pem = read_pem(key_path, f"{flag.replace('cert', 'key')} private key")
    cert = load_certificate(cert_pem, f"{flag} file {cert_path}")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise SecurityError(
            f"key file {key_path} is not an unencrypted PEM private key ({exc}); "
            "pxgrpc cannot use passphrases"
        ) from None
    if _public_bytes(key.public_key()) != _public_bytes(cert.public_key()):
        raise SecurityError(
            f"key file {key_path} does not belong to certificate {cert_path}; pass the matching pair"
        )
    check_validity(cert, f"certificate {cert_path}", "issue a new one (`pxgrpc tls --help`)")
    return CertKey(cert_pem, key_pem)


def _public_bytes(public_key: object) -> bytes:
    encode = getattr(public_key, "public_bytes", None)
    if encode is None:
        return b""
    result: bytes = encode(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return result


def common_name(name: x509.Name) -> str:
    """The CN of a certificate name (or the whole name when it has no CN)."""
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if attrs:
        value = attrs[0].value
        return value.decode() if isinstance(value, bytes) else value
    return name.rfc4514_string()


def subject_names(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses a (server) certificate is valid for."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [common_name(cert.subject)]
    names: list[str] = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return names


def signed_by(cert: x509.Certificate, ca_pem: bytes) -> bool:
    """True when some certificate in ``ca_pem`` directly issued ``cert``."""
    try:
        cas = x509.load_pem_x509_certificates(ca_pem)
    except ValueError:
        return False
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


def override(
    info: ConnectionInfo,
    *,
    cert: str | os.PathLike[str] | None = None,
    key: str | os.PathLike[str] | None = None,
    ca: str | os.PathLike[str] | None = None,
    server_name: str | None = None,
    names: tuple[str, str, str] = ("tls_cert=", "tls_key=", "tls_ca="),
) -> ConnectionInfo:
    """A copy of ``info`` with the TLS settings the user gave explicitly (files are loaded and
    checked here); ``names`` is how the user spelled cert, key and CA, for error messages."""
    info = dataclasses.replace(info)
    if (cert is None) != (key is None):
        raise SecurityError(f"mutual TLS needs both {names[0]} and {names[1]} (a certificate and its key)")
    if cert is not None and key is not None:
        pair = load_cert_pair(cert, key, names[0])
        info.tls_client_cert, info.tls_client_key = pair.cert_pem.decode(), pair.key_pem.decode()
        info.tls = True
    if ca is not None:
        info.tls_ca = read_pem(ca, names[2]).decode()
        info.tls = True
    if server_name:
        info.tls_server_name = server_name
    return info


# --------------------------------------------------------------------------- issuing to files


def _write_private(path: pathlib.Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def _write_pair(directory: pathlib.Path, stem: str, pair: CertKey) -> tuple[pathlib.Path, pathlib.Path]:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
    cert_path.write_bytes(pair.cert_pem)
    _write_private(key_path, pair.key_pem)
    return cert_path, key_path


def create_ca(directory: pathlib.Path, common_name: str = "pxgrpc CA", days: int = 3650) -> pathlib.Path:
    """Create ``ca.pem`` and ``ca-key.pem`` (mode 0600) in ``directory``; refuse to overwrite."""
    if (directory / CA_KEY).exists():
        raise SecurityError(f"{directory / CA_KEY} exists already; remove it or choose another --dir")
    cert_path, _ = _write_pair(directory, "ca", certs.make_ca(common_name, days))
    return cert_path


def load_ca(directory: pathlib.Path) -> CertKey:
    """The CA made by :func:`create_ca` in ``directory``."""
    return CertKey(read_pem(directory / CA_CERT, "CA certificate"), read_pem(directory / CA_KEY, "CA key"))


def issue_server(
    directory: pathlib.Path, hosts: list[str], name: str = "server", days: int = 825
) -> pathlib.Path:
    """Issue ``<name>.pem``/``<name>-key.pem`` for a controller reachable as ``hosts``."""
    if not hosts:
        raise SecurityError("a server certificate needs the names engines and clients dial: pass --host")
    cert_path, _ = _write_pair(directory, name, certs.make_server_cert(load_ca(directory), hosts, days))
    return cert_path


def issue_client(directory: pathlib.Path, name: str, days: int = 825) -> pathlib.Path:
    """Issue ``<name>.pem``/``<name>-key.pem``, a client certificate for mutual TLS."""
    cert_path, _ = _write_pair(directory, name, certs.make_client_cert(load_ca(directory), name, days))
    return cert_path


# --------------------------------------------------------------------------- `pxgrpc tls`


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `pxgrpc tls ca|server|client` to the `pxgrpc` command."""
    tls = subparsers.add_parser("tls", help="make a CA and issue server and client certificates (PEM files)")
    actions = tls.add_subparsers(dest="action", required=True)
    ca = actions.add_parser(
        "ca", help="create a CA: DIR/ca.pem (share it) and DIR/ca-key.pem (keep it secret)"
    )
    server = actions.add_parser("server", help="issue DIR/NAME.pem and DIR/NAME-key.pem for a controller")
    server.add_argument(
        "--host",
        action="append",
        default=[],
        required=True,
        help="a name or address engines and clients dial (repeatable)",
    )
    server.add_argument("--name", default="server", help="file name stem (default: server)")
    client = actions.add_parser("client", help="issue DIR/NAME.pem and DIR/NAME-key.pem for mutual TLS")
    client.add_argument("--name", required=True, help="who holds it, e.g. engine or alice (file name and CN)")
    for parser in (ca, server, client):
        parser.add_argument(
            "--dir",
            type=pathlib.Path,
            default=pathlib.Path("pxgrpc-pki"),
            help="directory of the CA files (default: ./pxgrpc-pki)",
        )
        parser.add_argument("--days", type=int, default=None, help="validity in days")


def run_command(args: argparse.Namespace) -> pathlib.Path:
    """Run a `pxgrpc tls` action; return the certificate file it wrote."""
    if args.action == "ca":
        return create_ca(args.dir, days=args.days or 3650)
    if args.action == "server":
        return issue_server(args.dir, args.host, args.name, days=args.days or 825)
    return issue_client(args.dir, args.name, days=args.days or 825)
