"""Who is calling: the API key on the request, resolved to its tenant.

Keys come as `Authorization: Bearer <key>` (or `X-API-Key: <key>`). A missing, unknown
or revoked key is a 401 problem; an admin-only route called with a tenant key is a 403.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from api.deps import SessionFactoryDep
from api.errors import Forbidden, Unauthenticated
from squeeze.settings import Settings
from store import tenants
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


def authenticate(
    sessions: SessionFactoryDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    header_key: Annotated[str | None, Security(_header)],
) -> Caller:
    token = bearer.credentials if bearer is not None else header_key
    if not token:
        raise Unauthenticated("an API key is required: send `Authorization: Bearer <key>`")
    # Its own short transaction: the request's session may be rolled back on an error,
    # and authentication must not hold a write lock.
    with transaction(sessions) as session:
        key = tenants.find_active_key(session, token)
        if key is None:
            raise Unauthenticated("the API key is not valid (unknown or revoked)")
        return Caller(key_id=key.id, tenant_id=key.tenant_id, is_admin=key.is_admin)


def require_admin(caller: Annotated[Caller, Depends(authenticate)]) -> Caller:
    if not caller.is_admin:
        raise Forbidden("this call needs an admin API key")
    return caller


CallerDep = Annotated[Caller, Depends(authenticate)]
AdminDep = Annotated[Caller, Depends(require_admin)]


def bootstrap_admin_key(sessions: sessionmaker[Session], settings: Settings) -> None:
    """Make sure an admin key exists: the configured one, else one made on first start
    and written to `settings.admin_key_file` (readable by the service's user only)."""
    if settings.admin_api_key is not None:
        token = settings.admin_api_key.get_secret_value()
    else:
        token = _admin_token_from_file(settings)
    with transaction(sessions) as session:
        tenants.ensure_admin_key(session, token)


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
