"""When a request is sent again: connection errors, 5xx and 429, with backoff.

A request that may change something is only repeated when the service cannot have acted
on it: the connection was never made, or the answer was 429 or 503 (refused before any
work). Job and batch submissions carry an Idempotency-Key, so they count as safe.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
# answers that prove the service did nothing with the request
NOT_ACTED_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class RetryPolicy:
    """`max_attempts` tries in all; waits `backoff_s * 2**(n-1)` (at most `max_backoff_s`,
    plus up to `jitter` of it at random) or what `Retry-After` says, unless that is over
    `max_retry_after_s`: then the error is raised at once."""

    max_attempts: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    max_retry_after_s: float = 120.0
    jitter: float = 0.1

    def delay_s(self, attempt: int, retry_after_s: float | None) -> float | None:
        """Seconds to wait after failed attempt number `attempt` (1-based); None: stop."""
        if attempt >= self.max_attempts:
            return None
        if retry_after_s is not None:
            return None if retry_after_s > self.max_retry_after_s else max(retry_after_s, 0.0)
        delay = min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)
        return delay * (1 + self.jitter * random.random())


NO_RETRIES = RetryPolicy(max_attempts=1)


def retry_after_s(response: httpx.Response) -> float | None:
    """`Retry-After` as seconds (a number, or an HTTP date), None when absent or unreadable."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


def should_retry_status(status: int, *, safe: bool) -> bool:
    return status in (RETRYABLE_STATUSES if safe else NOT_ACTED_STATUSES)


def should_retry_error(error: httpx.TransportError, *, safe: bool) -> bool:
    # a request that never connected was never seen by the service
    return safe or isinstance(error, httpx.ConnectError | httpx.ConnectTimeout)
