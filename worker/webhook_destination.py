"""Where a webhook may go: not to the service's own network.

A job names its webhook URL, so without this check any tenant could make the worker POST
to loopback, link-local (cloud metadata at 169.254.169.254) or private addresses inside
the deployment (server-side request forgery). The host is resolved at delivery time, right
before the request, so a name that later resolves elsewhere (DNS rebinding) is caught on
the attempt that would use it. `SQUEEZE_WEBHOOK_ALLOW_PRIVATE_HOSTS=true` lifts the check
for installations whose receivers live on the same network (and for tests).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


class ForbiddenDestination(ValueError):
    pass


def check_destination(url: str) -> None:
    """Raise ForbiddenDestination when the URL's host is, or resolves to, an address that
    is not globally routable; OSError propagates when the name cannot be resolved."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = {
        str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    }
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
        if not ip.is_global or ip.is_multicast:
            raise ForbiddenDestination(
                f"the webhook host {host!r} resolves to {ip}, which is not a public address"
            )
