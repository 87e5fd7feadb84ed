"""The service's errors as the CLI prints them, with what to do where the service's own
words cannot know it: which URL was tried and how to set it, where a key comes from."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from squeeze.client.errors import SqueezeError

# Where `squeeze serve` (and the API on the embedded default) writes the admin key it
# makes on first start: <data dir>/admin-api-key, the data dir being SQUEEZE_DATA_DIR
# (default ./var).
KEY_FILE_NAME = "admin-api-key"


def _url_source(argv: Sequence[str] | None) -> str:
    given = list(argv) if argv is not None else []
    if any(arg == "--url" or arg.startswith("--url=") for arg in given):
        return "from --url"
    if os.environ.get("SQUEEZE_URL"):
        return "from SQUEEZE_URL"
    return "the default"


def key_file() -> Path:
    """The embedded service's admin key file for this working directory's data dir."""
    return Path(os.environ.get("SQUEEZE_DATA_DIR") or "var") / KEY_FILE_NAME


def explain(error: SqueezeError, args: argparse.Namespace, argv: Sequence[str] | None) -> str:
    """`squeeze: code (status): detail`, and for a few errors the way out."""
    where = f" ({error.status})" if error.status else ""
    head = f"squeeze: {error.code}{where}: {error.detail}"
    listed = _each_error(error)
    if len(listed) > 1:
        return f"squeeze: {error.code}{where}: {len(listed)} errors\n" + "\n".join(
            f"  - {message}" for message in listed
        )
    url = getattr(args, "url", "")
    if error.code == "connection_error":
        return (
            f"squeeze: cannot reach the service at {url} ({_url_source(argv)}): "
            f"{_reason(error.detail)}\n"
            "  set its URL with --url URL or the SQUEEZE_URL environment variable; "
            "to run one here: squeeze serve"
        )
    if error.code == "unauthenticated":
        given = bool(getattr(args, "api_key", None))
        found = key_file()
        where_key = (
            f"{found} holds the admin key of a service started in this folder: "
            f"export SQUEEZE_API_KEY=$(cat {found})"
            if found.is_file()
            else f"a service on the embedded default writes its admin key to <data dir>/"
            f"{KEY_FILE_NAME} ({found} unless SQUEEZE_DATA_DIR says otherwise)"
        )
        if not given:
            return (
                f"squeeze: no API key given ({url} needs one): pass --api-key sqz_... or set "
                f"SQUEEZE_API_KEY\n  {where_key}"
            )
        return (
            f"{head}\n  the key from --api-key / SQUEEZE_API_KEY is not one {url} knows "
            f"(a typo, revoked, or another service's)\n  {where_key}"
        )
    return head


def _each_error(error: SqueezeError) -> list[str]:
    """A refused request's errors, one sentence each (one per place: a union's members
    report the same place)."""
    if error.code != "invalid_request":
        return []
    items = error.problem.get("errors")
    if not isinstance(items, list):
        return []
    by_place: dict[str, str] = {}
    for item in items:
        if isinstance(item, dict) and item.get("msg"):
            by_place.setdefault(str(item.get("path", item.get("loc"))), str(item["msg"]))
    return list(by_place.values())


def _reason(detail: str) -> str:
    lowered = detail.lower()
    if "refused" in lowered:
        return "connection refused (nothing listens there)"
    if "name or service not known" in lowered or "nodename" in lowered or "getaddrinfo" in lowered:
        return "unknown host name"
    if "timed out" in lowered or "timeout" in lowered:
        return "no answer (timed out)"
    return detail
