"""squeeze: the Python client and CLI (the service lives in api/, worker/, core/, store/, service/).

`from squeeze import Client` works; the client is imported on first use only, so the
service's processes do not load it.
"""

from __future__ import annotations

from typing import Any

_CLIENT_NAMES = frozenset({"Client", "SqueezeError"})


def __getattr__(name: str) -> Any:
    if name in _CLIENT_NAMES:
        from squeeze import client

        return getattr(client, name)
    raise AttributeError(f"module 'squeeze' has no attribute {name!r}")
