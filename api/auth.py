"""Who is calling: the API key on the request, resolved to its tenant.

Keys come as `Authorization: Bearer <key>` (or `X-API-Key: <key>`). A missing, unknown
or revoked key is a 401 problem; an admin-only route called with a tenant key is a 403.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api.deps import SessionDep
from api.errors import Forbidden, Unauthenticated
from service.settings import Settings
from store import audit, tenants
from store.db import transaction

logger = logging.getLogger(__name__)

# auto_error=False: the absence of a key is answered by our own 401 problem body.
_bearer = HTTPBearer(auto_error=False, description="an API key: `Authorization: Bearer sqz_...`")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key")


@dataclass(frozen=True)
class Caller:
    key_id: str
    tenant_id: str
    is_admin: bool


class KeyCache:
    """Recently verified keys, so a client polling a job costs one database read, not two.

    Entries live `ttl_s`; a revocation through this process drops its entries at once,
    one through another API process is seen within `ttl_s`. Keyed by the secret's sha256,
    so the cache holds no secrets.
    """

    def __init__(self, ttl_s: float = 10.0, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, Caller]] = {}
        self._lock = threading.Lock()

    def get(self, digest: str) -> Caller | None:
        with self._lock:
            entry = self._entries.get(digest)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, digest: str, caller: Caller) -> None:
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()  # rare: many distinct keys; re-verified on next use
            self._entries[digest] = (time.monotonic() + self.ttl_s, caller)

    def forget_key(self, key_id: str) -> None:
        with self._lock:
            for digest in [d for d, (_, c) in self._entries.items() if c.key_id == key_id]:
                del self._entries[digest]


async def get_key_cache(request: Request) -> KeyCache:
    cache = getattr(request.app.state, "key_cache", None)
    if cache is None:
        cache = request.app.state.key_cache = KeyCache()
    assert isinstance(cache, KeyCache)
    return cache


KeyCacheDep = Annotated[KeyCache, Depends(get_key_cache)]


def token_from_headers(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key a request carries: `Authorization: Bearer <key>`, else `X-API-Key`."""
    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return x_api_key or None


async def caller_for_token(
    token: str | None,
    cache: KeyCache,
    lookup: Callable[[str], Awaitable[Caller | None]],
) -> Caller:
    """The caller a token stands for (cached, else `lookup`); Unauthenticated if none."""
    if not token:
        raise Unauthenticated("an API key is required: send `Authorization: Bearer <key>`")
    digest = tenants.secret_sha256(token)
    # async: a cached key (nearly every request) costs no thread-pool hand-over
    cached = cache.get(digest)
    if cached is not None:
        return cached
    caller = await lookup(token)
    if caller is None:
        raise Unauthenticated("the API key is not valid (unknown or revoked)")
    cache.put(digest, caller)
    return caller


async def authenticate(
    request: Request,
    session: SessionDep,
    cache: KeyCacheDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    header_key: Annotated[str | None, Security(_header)],
) -> Caller:
    # A write request was authenticated by api.admission before its body was read.
    gated = request.scope.get("state", {}).get("caller")
    if isinstance(gated, Caller):
        return gated
    token = bearer.credentials if bearer is not None else header_key

    async def lookup(token: str) -> Caller | None:
        # The request's own session (one connection per request: a second one here would
        # let a burst of requests hold the whole pool while each waits for another one).
        key = await run_in_threadpool(tenants.find_active_key, session, token)
        if key is None:
            return None
        return Caller(key_id=key.id, tenant_id=key.tenant_id, is_admin=key.is_admin)

    return await caller_for_token(token, cache, lookup)


async def require_admin(caller: Annotated[Caller, Depends(authenticate)]) -> Caller:
    if not caller.is_admin:
        raise Forbidden("this call needs an admin API key")
    return caller


CallerDep = Annotated[Caller, Depends(authenticate)]
AdminDep = Annotated[Caller, Depends(require_admin)]


def bootstrap_admin_key(sessions: sessionmaker[Session], settings: Settings) -> None:
    """Make sure the admin key is the configured one, else one made on first start and
    written to `settings.admin_key_file` (readable by the service's user only). Every
    other admin key is revoked (a rotated secret stops working) and the audit log says
    so; a configured secret that was revoked stops the start (RevokedAdminKey)."""
    if settings.admin_api_key is not None:
        token = settings.admin_api_key.get_secret_value()
    else:
        token = _admin_token_from_file(settings)
    with transaction(sessions) as session:
        rotation = tenants.ensure_admin_key(session, token)
        for old in rotation.revoked:
            audit.record(
                session,
                actor_key_id=None,
                action="admin_key.revoked_by_rotation",
                target_kind="api_key",
                target_id=old.id,
                tenant_id=old.tenant_id,
                details={"prefix": old.prefix, "replaced_by": rotation.key.id},
            )
        if rotation.created:
            audit.record(
                session,
                actor_key_id=None,
                action="admin_key.created",
                target_kind="api_key",
                target_id=rotation.key.id,
                tenant_id=rotation.key.tenant_id,
                details={"prefix": rotation.key.prefix},
            )
    if rotation.revoked:
        logger.warning(
            "the admin API key changed: revoked the previous admin key(s) %s",
            ", ".join(old.prefix + "..." for old in rotation.revoked),
        )


def _admin_token_from_file(settings: Settings) -> str:
    path = settings.admin_key_file
    if path.exists():
        return path.read_text().strip()
    token = tenants.new_token()
    # O_EXCL: two processes starting together must not write two different keys.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as file:
        file.write(token + "\n")
    logger.warning("created an admin API key; it is in %s", path)
    return token
