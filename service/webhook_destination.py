"""Where a webhook may go: not to the service's own network.

A job names its webhook URL, so without this check any tenant could make the worker POST
to loopback, link-local (cloud metadata at 169.254.169.254) or private addresses inside
the deployment (server-side request forgery). It is checked twice: at submission (the
API refuses a URL whose host is or resolves to such an address, 422) and at delivery,
right before the request, so a name that later resolves elsewhere is caught on the
attempt that would use it.

DNS rebinding: a name with a zero TTL can answer a public address to the check and
127.0.0.1 to the connection's own lookup. So a delivery resolves the name once, checks
every address, and connects to those very addresses (`Destination.addresses`), sending
the name in the Host header and as the TLS server name (SNI and certificate check).

Addresses that embed an IPv4 address (IPv4-mapped `::ffff:a.b.c.d`, NAT64
`64:ff9b::/96` and `64:ff9b:1::/48`, 6to4 `2002::/16`, Teredo) are judged by the IPv4
address they lead to. `SQUEEZE_WEBHOOK_ALLOW_PRIVATE_HOSTS=true` lifts the check for
installations whose receivers live on the same network (and for tests).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

# host, port -> the addresses a connection would use, in order
Resolver = Callable[[str, int], list[str]]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

NAT64_PREFIXES = (
    ipaddress.IPv6Network("64:ff9b::/96"),  # RFC 6052, well-known
    ipaddress.IPv6Network("64:ff9b:1::/48"),  # RFC 8215, local use
)


class ForbiddenDestination(ValueError):
    pass


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses getaddrinfo gives for a TCP connection, in its order, deduplicated."""
    addresses: list[str] = []
    for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        address = str(info[4][0]).split("%", 1)[0]  # drop an IPv6 zone id
        if address not in addresses:
            addresses.append(address)
    return addresses


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address leads to, when it is a translation of one."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]  # the client's address
    if any(ip in prefix for prefix in NAT64_PREFIXES):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public(ip: IPAddress) -> bool:
    """Globally routable unicast, and so is any IPv4 address it embeds."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner is not None:
            return is_public(inner)
    return ip.is_global and not ip.is_multicast


@dataclass(frozen=True)
class Destination:
    """A webhook URL with the addresses that were checked for it."""

    url: str
    host: str
    # the URL's host[:port] as written: the Host header
    netloc: str
    addresses: list[str]

    def url_for(self, address: str) -> str:
        """The URL with its host replaced by `address` (the connection goes there)."""
        parts = urlsplit(self.url)
        ip = ipaddress.ip_address(address)
        literal = f"[{ip}]" if ip.version == 6 else str(ip)
        netloc = literal if parts.port is None else f"{literal}:{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    @property
    def uses_tls(self) -> bool:
        return urlsplit(self.url).scheme == "https"


def resolve_destination(
    url: str, *, resolver: Resolver = system_resolver, allow_private: bool = False
) -> Destination:
    """Resolve the URL's host once and check every address; ForbiddenDestination when one
    is not public (unless `allow_private`), OSError when the name does not resolve."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    addresses = [str(literal)] if literal is not None else resolver(host, port)
    if not addresses:
        raise OSError(f"the webhook host {host!r} resolves to no address")
    if not allow_private:
        for address in addresses:
            ip = ipaddress.ip_address(address)
            if not is_public(ip):
                raise ForbiddenDestination(
                    f"the webhook host {host!r} resolves to {ip}, which is not a public address"
                )
    return Destination(url=url, host=host, netloc=parts.netloc, addresses=addresses)


def check_destination(url: str, resolver: Resolver = system_resolver) -> None:
    """Raise ForbiddenDestination when the URL's host is, or resolves to, an address that
    is not globally routable; OSError propagates when the name cannot be resolved."""
    resolve_destination(url, resolver=resolver)
