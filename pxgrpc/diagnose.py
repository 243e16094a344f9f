"""Why a connection to the controller failed, in one sentence with the fix.

gRPC reports failed connections as ``UNAVAILABLE: failed to connect to all addresses; last error:
UNKNOWN: ipv4:10.0.0.5:5000: Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: ...
CERTIFICATE_VERIFY_FAILED: ...``, or only ``Socket closed``. :func:`diagnose` classifies such a
failure (wrong token, untrusted/expired certificate, host-name mismatch, plaintext against TLS
and the reverse, missing or rejected client certificate, unreachable) and, when gRPC's text is
ambiguous, looks at the server itself (a TLS handshake that verifies nothing) to tell which.

>>> d = diagnose(code, details, ConnectTarget.of(info, role="engine"))
>>> d.cause, d.message
(<FailureCause.UNTRUSTED_CERTIFICATE: 'untrusted-certificate'>, "the controller at ...")
"""

from __future__ import annotations

import datetime
import enum
import logging
import re
import socket
import ssl
from dataclasses import dataclass
from typing import Literal

import grpc
from cryptography import x509

from pxgrpc.addresses import split_url
from pxgrpc.security import certfiles
from pxgrpc.security.certs import CertKey
from pxgrpc.security.connection_file import ConnectionInfo

logger = logging.getLogger(__name__)

Role = Literal["client", "engine"]
PROBE_TIMEOUT = 3.0


class FailureCause(enum.StrEnum):
    """What went wrong when connecting to a controller."""

    WRONG_TOKEN = "wrong-token"
    UNTRUSTED_CERTIFICATE = "untrusted-certificate"
    EXPIRED_CERTIFICATE = "expired-certificate"
    HOSTNAME_MISMATCH = "hostname-mismatch"
    PLAINTEXT_TO_TLS = "plaintext-to-tls"
    TLS_TO_PLAINTEXT = "tls-to-plaintext"
    CLIENT_CERT_REQUIRED = "client-certificate-required"
    CLIENT_CERT_REJECTED = "client-certificate-rejected"
    UNREACHABLE = "unreachable"
    NO_ANSWER = "no-answer"
    OTHER = "other"


#: Causes where the controller refused our credentials (token or client certificate).
CREDENTIAL_CAUSES = frozenset(
    {FailureCause.WRONG_TOKEN, FailureCause.CLIENT_CERT_REQUIRED, FailureCause.CLIENT_CERT_REJECTED}
)
#: Causes where the TLS set-up itself failed on our side or the protocols did not match.
TLS_CAUSES = frozenset(
    {
        FailureCause.UNTRUSTED_CERTIFICATE,
        FailureCause.EXPIRED_CERTIFICATE,
        FailureCause.HOSTNAME_MISMATCH,
        FailureCause.PLAINTEXT_TO_TLS,
        FailureCause.TLS_TO_PLAINTEXT,
    }
)


@dataclass(frozen=True)
class Diagnosis:
    """A classified connection failure: ``message`` names the cause and the fix, on one line."""

    cause: FailureCause
    message: str

    @property
    def retryable(self) -> bool:
        """True when trying again later may work (the controller may not listen yet)."""
        return self.cause in (FailureCause.UNREACHABLE, FailureCause.NO_ANSWER)


class ConnectFailure(Exception):
    """Connecting to the controller failed; ``diagnosis`` says why and how to fix it."""

    def __init__(self, diagnosis: Diagnosis) -> None:
        super().__init__(diagnosis.message)
        self.diagnosis = diagnosis


@dataclass(frozen=True)
class ConnectTarget:
    """What we dialed, and with which credentials: the context a diagnosis needs."""

    url: str
    tls: bool
    ca_pem: bytes | None = None
    server_name: str | None = None
    client_cert: CertKey | None = None
    role: Role = "client"

    @classmethod
    def of(cls, info: ConnectionInfo, role: Role) -> ConnectTarget:
        """The target described by a connection file (or the engine's flags)."""
        return cls(
            url=info.url,
            tls=info.uses_tls,
            ca_pem=info.tls_ca.encode() if info.tls_ca else None,
            server_name=info.tls_server_name,
            client_cert=info.client_cert(),
            role=role,
        )


@dataclass(frozen=True)
class _Fixes:
    conn: str
    ca: str
    cert: str
    name: str


_FIXES: dict[Role, _Fixes] = {
    "client": _Fixes(
        conn="connect with the connection file the controller wrote at its last start (controller.json)",
        ca="or pass the CA that signed the controller's certificate with Client(..., tls_ca=CA.pem)",
        cert="pass Client(..., tls_cert=CERT.pem, tls_key=KEY.pem) signed by the controller's CA",
        name="Client(..., tls_server_name=NAME)",
    ),
    "engine": _Fixes(
        conn="copy the connection file of the controller's last start here again "
        "(controller-engine.json) and run `pxgrpc-engine --file` with it",
        ca="or pass the CA that signed the controller's certificate with --tls-ca",
        cert="pass --tls-cert CERT.pem --tls-key KEY.pem signed by the controller's CA",
        name="--tls-server-name NAME",
    ),
}

_UNREACHABLE = (
    "Connection refused",
    "No route to host",
    "Network is unreachable",
    "DNS resolution failed",
    "Name or service not known",
    "Connection timed out",
    "Failed to connect to remote host",
    "Timeout occurred",
)
_TLS_TO_PLAINTEXT = ("WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG", "RECORD_TOO_LARGE", "HTTP_REQUEST")
_HOSTNAME = ("Hostname Verification", "Peer name", "No match found for server name", "SUBJECT_ALT_NAME")
_CLOSED = ("Socket closed", "Connection reset", "Broken pipe", "End of TCP stream", "Connection closed")
_PEER_ALERTS = (
    "ALERT_CERTIFICATE_REQUIRED",
    "ALERT_BAD_CERTIFICATE",
    "ALERT_UNKNOWN_CA",
    "ALERT_CERTIFICATE_",
)


def diagnose(
    code: grpc.StatusCode | None, details: str, target: ConnectTarget, probe: bool = True
) -> Diagnosis:
    """Classify a failed call to the controller; ``probe`` allows one look at the server itself."""
    details = details or ""
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return _wrong_token(details, target)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return Diagnosis(
            FailureCause.NO_ANSWER,
            f"no answer from the controller at {target.url} in time ({short(details)}). Fix: check that the "
            "controller runs and that no firewall drops traffic to that address and port",
        )
    if code != grpc.StatusCode.UNAVAILABLE:
        name = code.name if code is not None else "error"
        return Diagnosis(
            FailureCause.OTHER, f"the controller at {target.url} answered {name}: {short(details)}"
        )
    return _unavailable(details, target, probe)


def _unavailable(details: str, target: ConnectTarget, probe: bool) -> Diagnosis:
    upper = details.upper()
    if "CERTIFICATE HAS EXPIRED" in upper or "NOT YET VALID" in upper:
        return _expired(target, probe)
    if any(marker.upper() in upper for marker in _HOSTNAME):
        return _hostname(target, probe)
    if "CERTIFICATE_VERIFY_FAILED" in upper:
        return _untrusted(details, target, probe)
    if any(marker in upper for marker in _TLS_TO_PLAINTEXT):
        return _tls_to_plaintext(target)
    if any(marker in upper for marker in _PEER_ALERTS):
        return _client_cert(target)
    if any(marker.upper() in upper for marker in _UNREACHABLE):
        return _unreachable(details, target)
    if any(marker.upper() in upper for marker in _CLOSED):
        if target.tls:
            return _client_cert(target)
        if probe and probe_server(target).speaks_tls:
            return _plaintext_to_tls(target)
        return Diagnosis(
            FailureCause.OTHER,
            f"the controller at {target.url} closed the connection ({short(details)}). Fix: check that this "
            "address is a pxgrpc controller; if it uses TLS, " + _FIXES[target.role].conn,
        )
    return Diagnosis(
        FailureCause.OTHER, f"cannot connect to the controller at {target.url}: {short(details)}"
    )


def short(details: str) -> str:
    """gRPC's failure text without the boilerplate ('failed to connect to all addresses; ...')."""
    text = re.sub(r"^failed to connect to all addresses; last error: ", "", details.strip())
    text = re.sub(r"^[A-Z_]+: (ipv4|ipv6|unix|dns):\S+: ", "", text)
    text = re.sub(r": OK$", "", text)
    return text


# --------------------------------------------------------------------------- the causes


def _wrong_token(details: str, target: ConnectTarget) -> Diagnosis:
    fixes = _FIXES[target.role]
    return Diagnosis(
        FailureCause.WRONG_TOKEN,
        f"the controller at {target.url} refused our credentials: {details}. Fix: {fixes.conn}; "
        "tokens change at every start unless given with --token/--engine-token",
    )


def _expired(target: ConnectTarget, probe: bool) -> Diagnosis:
    cert = probe_server(target).certificate if probe else None
    when = ""
    if cert is not None:
        now = datetime.datetime.now(datetime.UTC)
        if cert.not_valid_before_utc > now:
            when = f" (not valid before {certfiles.format_utc(cert.not_valid_before_utc)}: check the clocks)"
        else:
            when = f" (expired {certfiles.format_utc(cert.not_valid_after_utc)})"
    return Diagnosis(
        FailureCause.EXPIRED_CERTIFICATE,
        f"the controller at {target.url} presented an expired or not yet valid TLS certificate{when}. "
        "Fix: give the controller a current certificate (restart it with --tls auto, or issue one with "
        "`pxgrpc tls server`), and check that the clocks of both hosts are right",
    )


def _hostname(target: ConnectTarget, probe: bool) -> Diagnosis:
    host = target.server_name or _host(target.url)
    cert = probe_server(target).certificate if probe else None
    names = f" (it names {', '.join(certfiles.subject_names(cert))})" if cert is not None else ""
    fixes = _FIXES[target.role]
    return Diagnosis(
        FailureCause.HOSTNAME_MISMATCH,
        f"the TLS certificate of the controller at {target.url} is not valid for the name {host!r}{names}. "
        f"Fix: dial a name the certificate holds, or check against one with {fixes.name}, or restart the "
        f"controller with --location {host} (or --tls-san {host})",
    )


def _untrusted(details: str, target: ConnectTarget, probe: bool) -> Diagnosis:
    cert = probe_server(target).certificate if probe else None
    issued = ""
    if cert is not None:
        trusted = ""
        if target.ca_pem:
            ours = certfiles.load_certificate(target.ca_pem, "tls_ca")
            trusted = f", we trust {certfiles.common_name(ours.subject)!r}"
        issued = f" (it was issued by {certfiles.common_name(cert.issuer)!r}{trusted})"
    where = "the CA we were given" if target.ca_pem else "the system's trusted CAs"
    fixes = _FIXES[target.role]
    return Diagnosis(
        FailureCause.UNTRUSTED_CERTIFICATE,
        f"the controller at {target.url} presented a TLS certificate not signed by {where}{issued}. "
        f"Fix: {fixes.conn}, as --tls auto makes a new CA at every start; {fixes.ca}",
    )


def _tls_to_plaintext(target: ConnectTarget) -> Diagnosis:
    return Diagnosis(
        FailureCause.TLS_TO_PLAINTEXT,
        f"we connected with TLS but the controller at {target.url} does not speak TLS. Fix: "
        f"{_FIXES[target.role].conn}, or restart the controller with --tls auto",
    )


def _plaintext_to_tls(target: ConnectTarget) -> Diagnosis:
    fixes = _FIXES[target.role]
    return Diagnosis(
        FailureCause.PLAINTEXT_TO_TLS,
        f"the controller at {target.url} speaks TLS but we connected without TLS (we have no CA for it). "
        f"Fix: {fixes.conn}, which holds the controller's CA; {fixes.ca}",
    )


def _client_cert(target: ConnectTarget) -> Diagnosis:
    fixes = _FIXES[target.role]
    if target.client_cert is None:
        return Diagnosis(
            FailureCause.CLIENT_CERT_REQUIRED,
            f"the controller at {target.url} closed the TLS connection: it requires a client certificate "
            f"(mutual TLS) and we presented none. Fix: {fixes.conn}, which holds one when the controller "
            f"runs with --tls auto; or {fixes.cert}",
        )
    cert = certfiles.load_certificate(target.client_cert.cert_pem, "our client certificate")
    why = f"our client certificate {certfiles.common_name(cert.subject)!r}"
    now = datetime.datetime.now(datetime.UTC)
    if cert.not_valid_after_utc < now:
        why += f" expired {certfiles.format_utc(cert.not_valid_after_utc)}"
    elif target.ca_pem and not certfiles.signed_by(cert, target.ca_pem):
        why += f" was issued by {certfiles.common_name(cert.issuer)!r}, not by the controller's CA"
    else:
        why += " was refused"
    return Diagnosis(
        FailureCause.CLIENT_CERT_REJECTED,
        f"the controller at {target.url} closed the TLS connection (mutual TLS): {why}. Fix: {fixes.cert}",
    )


def _unreachable(details: str, target: ConnectTarget) -> Diagnosis:
    return Diagnosis(
        FailureCause.UNREACHABLE,
        f"cannot reach the controller at {target.url}: {short(details)}. Fix: check that the controller "
        "runs and listens on that address (a controller on 127.0.0.1 is reachable from its own host only: "
        "start it with --ip ADDRESS --tls auto)",
    )


# --------------------------------------------------------------------------- looking at the server


@dataclass(frozen=True)
class ProbeResult:
    """What a verify-nothing TLS handshake with the server showed."""

    speaks_tls: bool | None  # None: could not connect at all
    certificate: x509.Certificate | None = None


def _host(url: str) -> str:
    try:
        return split_url(url)[0]
    except ValueError:
        return url


def probe_server(target: ConnectTarget, timeout: float = PROBE_TIMEOUT) -> ProbeResult:
    """Try a TLS handshake that verifies nothing, to learn whether the server speaks TLS and
    which certificate it shows. Only ever dials ``target.url`` (the address that just failed)."""
    try:
        host, port = split_url(target.url)
    except ValueError:
        return ProbeResult(None)
    if port == 0:
        return ProbeResult(None)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            server_name = target.server_name or host
            with context.wrap_socket(sock, server_hostname=server_name) as tls_sock:
                der = tls_sock.getpeercert(binary_form=True)
    except ssl.SSLError as exc:
        logger.debug("TLS probe of %s: %s", target.url, exc)
        return ProbeResult(False)
    except OSError as exc:
        logger.debug("TLS probe of %s failed to connect: %s", target.url, exc)
        return ProbeResult(None)
    cert = x509.load_der_x509_certificate(der) if der else None
    return ProbeResult(True, cert)
