"""Host and port addresses: split and join ``host:port``, tell loopback apart, compare hosts.

Clients, engines, the controller and the certificate code all parse addresses the same way here:
``[v6]:port`` brackets, ``unix:`` sockets, IPv4-mapped IPv6 addresses and gRPC peer strings.
"""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """Tell whether ``host`` only reaches this machine (127.0.0.0/8, ::1, localhost, unix:).

    The wildcard addresses ``""``, ``0.0.0.0`` and ``::`` are *not* loopback.
    """
    if host.startswith(("unix:", "unix-abstract:")):
        return True
    name = host.strip()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name.lower().rstrip(".") == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def split_url(url: str) -> tuple[str, int]:
    """Split ``host:port`` (or ``[v6]:port``) into host and port.

    Brackets are removed from IPv6 hosts. Unix socket URLs come back whole with port 0.
    Raises :class:`ValueError` for an address without a valid port.
    """
    if url.startswith(("unix:", "unix-abstract:")):
        return url, 0
    if url.startswith("["):
        host, sep, port_text = url[1:].partition("]:")
        if not sep:
            raise ValueError(f"bad address {url!r}: expected '[ipv6]:port'")
    else:
        host, sep, port_text = url.rpartition(":")
        if not sep:
            raise ValueError(f"bad address {url!r}: expected 'host:port'")
        if ":" in host:
            raise ValueError(f"bad address {url!r}: write IPv6 hosts in brackets, '[{host}]:port'")
    return host, _parse_port(url, port_text)


def _parse_port(url: str, port_text: str) -> int:
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"bad address {url!r}: port must be a number from 0 to 65535")
    return int(port_text)


def join_url(host: str, port: int) -> str:
    """Build a dialable ``host:port`` address, bracketing IPv6 literals (inverse of split_url)."""
    if ":" in host and not host.startswith(("[", "unix:", "unix-abstract:")):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def normal_host(host: str) -> str:
    """An address in one spelling (IPv4-mapped IPv6 as IPv4, zone dropped); names lower-cased."""
    name = host.strip().strip("[]").split("%", 1)[0]
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return name.lower().rstrip(".")
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def peer_address(peer: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address in a gRPC peer string ("ipv4:10.0.0.2:5123", "ipv6:[::1]:5123"); None for
    other transports (unix sockets). IPv4-mapped IPv6 addresses come back as IPv4."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    try:
        host, _ = split_url(rest)
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
