"""Public ids: a prefix, then time-ordered hex (so ids sort by creation), then randomness."""

from __future__ import annotations

import secrets
import time


def new_id(prefix: str) -> str:
    return f"{prefix}_{time.time_ns() // 1_000_000:012x}{secrets.token_hex(6)}"
