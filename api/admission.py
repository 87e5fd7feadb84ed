"""What a request must pass before it may read its body or take one of the API's slots.

Before these, `POST /v1/jobs` with `Content-Length: 1000` and 5 body bytes, no key, took
one of the 32 slots (api/concurrency.py) while FastAPI waited for the rest of its body,
forever: 32 such connections froze every route, probes included. Now, outermost first:

1. `AuthGateMiddleware`: a write request (POST, PUT, PATCH, DELETE) under /v1 must carry
   a valid key before anything reads its body; the caller it resolves is handed to the
   routes' `authenticate` dependency (no second lookup).
2. `RateLimitMiddleware`: a token bucket per key on those write requests (429 +
   Retry-After), in Redis when one is configured, else in this process.
3. `BodyBufferMiddleware`: a body of a route that does not stream (JSON, up to 1 MiB) is
   read whole, within `api_body_timeout_s`, before the request takes a slot; a slow or
   stalled client costs a socket and a coroutine, not a slot (408 `body_timeout`).

Uploads stream inside their slot (they may be gigabytes): api/limits.py fails one whose
client goes silent for `api_body_idle_timeout_s`, and api/concurrency.py lets uploads
hold at most `api_max_concurrent_uploads` of the slots.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import Caller, KeyCache, caller_for_token, token_from_headers
from api.errors import BodyTimeout, PayloadTooLarge, RateLimited, Unauthenticated
from api.limits import BodyLimits, content_length
from api.problems import response_for

logger = logging.getLogger(__name__)

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# where the gate and the rate limit apply: the API's own routes (probes, docs and the
# dashboard's static page are outside)
GUARDED_PREFIX = "/v1/"
CALLER_STATE = "caller"


def is_guarded_write(scope: Scope) -> bool:
    return scope["method"] in WRITE_METHODS and str(scope["path"]).startswith(GUARDED_PREFIX)


class AuthGateMiddleware:
    """401 for a write request without a valid key, before its body is read."""

    def __init__(self, app: ASGIApp, sessions: sessionmaker[Session], cache: KeyCache) -> None:
        self.app = app
        self.sessions = sessions
        self.cache = cache

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_guarded_write(scope):
            await self.app(scope, receive, send)
            return
        try:
            caller = await self._caller(scope)
        except Unauthenticated as refused:
            await response_for(refused)(scope, receive, send)
            return
        scope.setdefault("state", {})[CALLER_STATE] = caller
        await self.app(scope, receive, send)

    async def _caller(self, scope: Scope) -> Caller:
        headers = {name.decode("latin-1").lower(): value for name, value in scope["headers"]}
        token = token_from_headers(
            (headers.get("authorization") or b"").decode("latin-1"),
            (headers.get("x-api-key") or b"").decode("latin-1"),
        )
        # A short session of its own, closed before the request goes on: it holds its
        # connection for one indexed read and waits on nothing else meanwhile, so it
        # cannot join the thread/connection deadlock api/concurrency.py prevents.
        return await caller_for_token(token, self.cache, self._lookup)

    async def _lookup(self, token: str) -> Caller | None:
        return await run_in_threadpool(_find_caller, self.sessions, token)


def _find_caller(sessions: sessionmaker[Session], token: str) -> Caller | None:
    from store import tenants

    with sessions() as session:
        key = tenants.find_active_key(session, token)
        if key is None:
            return None
        return Caller(key_id=key.id, tenant_id=key.tenant_id, is_admin=key.is_admin)


# --- rate limit ---------------------------------------------------------------------------


class Buckets(Protocol):
    async def take(self, key: str) -> float:
        """Take one token from `key`'s bucket: 0.0 when it had one, else the seconds until
        it will."""


class MemoryBuckets:
    """Token buckets in this process (each API process keeps its own)."""

    MAX_KEYS = 100_000

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}

    async def take(self, key: str) -> float:
        # runs on the event loop only: no lock needed between the read and the write
        now = time.monotonic()
        tokens, at = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate_per_s)
        wait_s = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait_s = (1.0 - tokens) / self.rate_per_s
        if len(self._buckets) >= self.MAX_KEYS and key not in self._buckets:
            self._buckets.clear()  # rare: that many keys at once; each restarts full
        self._buckets[key] = (tokens, now)
        return wait_s


# One round trip, atomic on the server, timed by the server's clock (API hosts' clocks
# may differ). Returns the wait as a string: Lua numbers come back truncated to integers.
TAKE_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return tostring(wait)
"""


class RedisBuckets:
    """Token buckets in Redis, shared by every API process. When Redis does not answer,
    requests pass (logged): the rate limit must not take the API down with the broker."""

    PREFIX = "squeeze:ratelimit:"

    def __init__(self, url: str, rate_per_s: float, burst: int) -> None:
        import redis.asyncio as redis_asyncio

        self.rate_per_s = rate_per_s
        self.burst = burst
        self._redis: Any = redis_asyncio.from_url(url, socket_timeout=1.0)
        self._script: Any = self._redis.register_script(TAKE_SCRIPT)

    async def take(self, key: str) -> float:
        try:
            wait = await self._script(
                keys=[self.PREFIX + key], args=[self.rate_per_s, self.burst]
            )
        except Exception:
            logger.warning("rate limit: Redis did not answer; the request passes", exc_info=True)
            return 0.0
        return float(wait)


def buckets_for(redis_url: str | None, rate_per_s: float, burst: int) -> Buckets:
    if redis_url:
        return RedisBuckets(redis_url, rate_per_s, burst)
    return MemoryBuckets(rate_per_s, burst)


class RateLimitMiddleware:
    """429 `rate_limited` with Retry-After when the caller's key has no token left."""

    def __init__(
        self, app: ASGIApp, buckets: Buckets | None, rate_per_s: float, burst: int
    ) -> None:
        self.app = app
        self.buckets = buckets
        self.rate_per_s = rate_per_s
        self.burst = burst

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        caller = scope.get("state", {}).get(CALLER_STATE) if scope["type"] == "http" else None
        if self.buckets is None or not isinstance(caller, Caller):
            await self.app(scope, receive, send)
            return
        wait_s = await self.buckets.take(caller.key_id)
        if wait_s > 0:
            refused = RateLimited(
                max(1, math.ceil(wait_s)), rate_per_s=self.rate_per_s, burst=self.burst
            )
            await response_for(refused)(scope, receive, send)
            return
        await self.app(scope, receive, send)


# --- bodies ---------------------------------------------------------------------------------


class BodyBufferMiddleware:
    """Reads a non-streamed route's body whole, within `timeout_s`, then replays it."""

    def __init__(self, app: ASGIApp, limits: BodyLimits, timeout_s: float) -> None:
        self.app = app
        self.limits = limits
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in WRITE_METHODS
            or self.limits.is_streamed(scope["method"], scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        declared = content_length(scope)
        if declared == 0:
            await self.app(scope, receive, send)
            return
        limit = self.limits.limit_for(scope["method"], scope["path"])
        if declared is not None and declared > limit:
            await response_for(PayloadTooLarge(limit))(scope, receive, send)
            return
        try:
            with anyio.fail_after(self.timeout_s):
                messages = await _read_body(receive, limit)
        except TimeoutError:
            await response_for(BodyTimeout(self.timeout_s, idle=False))(scope, receive, send)
            return
        except PayloadTooLarge as refused:
            await response_for(refused)(scope, receive, send)
            return
        if messages is None:
            return  # the client went away: nobody to answer
        await self.app(scope, _replay(messages, receive), send)


async def _read_body(receive: Receive, limit: int) -> list[Message] | None:
    """The body's messages, or None when the client disconnected first."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        messages.append(message)
        size += len(message.get("body", b""))
        if size > limit:
            raise PayloadTooLarge(limit)
        if not message.get("more_body", False):
            return messages


def _replay(messages: list[Message], receive: Receive) -> Callable[[], Awaitable[Message]]:
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()  # after the body: the disconnect, when it comes

    return replayed
