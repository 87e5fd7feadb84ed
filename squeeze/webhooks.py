"""Webhook signatures: how the service signs a delivery and how a receiver checks it.

The header is `Squeeze-Signature: t=<unix seconds>,v1=<hex>`, where the hex is
HMAC-SHA256 over `"<t>.<raw body>"` keyed with the API key's webhook secret. Signing the
timestamp with the body lets a receiver refuse a captured delivery replayed later.
Standard library only, so a receiver can copy this module as it is.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "Squeeze-Signature"
EVENT_HEADER = "Squeeze-Event"
DELIVERY_HEADER = "Squeeze-Delivery"
DEFAULT_TOLERANCE_S = 300


class WebhookVerificationError(ValueError):
    """The signature is missing, malformed, does not match, or is too old."""


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """The hex HMAC-SHA256 of `"<timestamp>.<body>"` under `secret`."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The `Squeeze-Signature` value for `body` sent at `timestamp` (default: now)."""
    when = int(time.time()) if timestamp is None else timestamp
    return f"t={when},v1={signature(secret, body, when)}"


def verify_signature(
    secret: str,
    body: bytes,
    header: str | None,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> int:
    """Check a delivery; returns its timestamp, raises WebhookVerificationError.

    `body` must be the raw bytes received (not re-serialised JSON). Several `v1`
    entries are accepted (any may match), so the format can carry a second signature
    while a secret is being rotated.
    """
    if not header:
        raise WebhookVerificationError(f"no {SIGNATURE_HEADER} header")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == "v1" and value:
            candidates.append(value)
    if timestamp is None or not candidates:
        raise WebhookVerificationError(f"malformed {SIGNATURE_HEADER} header")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise WebhookVerificationError("the signature's timestamp is outside the tolerance")
    expected = signature(secret, body, timestamp)
    if not any(hmac.compare_digest(expected, candidate) for candidate in candidates):
        raise WebhookVerificationError("the signature does not match")
    return timestamp
