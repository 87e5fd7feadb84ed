"""Tenants and their API keys; usage counted against quotas.

A key's secret is random (256 bits), so a plain sha256 of it is a safe lookup key: there
is nothing to brute-force, and lookups stay one indexed read per request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from store.catalog import NotFound
from store.ids import new_id
from store.tables import (
    ApiKeyRow,
    ArtifactRow,
    DatasetRow,
    JobRow,
    ModelRow,
    TenantRow,
    utcnow,
)

TOKEN_PREFIX = "sqz_"
ADMIN_TENANT_NAME = "admin"
ACTIVE_STATES = ("queued", "running")


def secret_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


WEBHOOK_SECRET_PREFIX = "whsec_"


def new_webhook_secret() -> str:
    return WEBHOOK_SECRET_PREFIX + secrets.token_urlsafe(24)


@dataclass(frozen=True)
class IssuedKey:
    """A key as created: the only time its token exists outside the client."""

    row: ApiKeyRow
    token: str


def create_tenant(
    session: Session,
    name: str,
    *,
    quota_storage_bytes: int | None = None,
    quota_concurrent_jobs: int | None = None,
) -> TenantRow:
    row = TenantRow(
        id=new_id("ten"),
        name=name,
        quota_storage_bytes=quota_storage_bytes,
        quota_concurrent_jobs=quota_concurrent_jobs,
        submissions=0,
    )
    session.add(row)
    session.flush()
    return row


def get_tenant(session: Session, tenant_id: str) -> TenantRow:
    row = session.get(TenantRow, tenant_id)
    if row is None:
        raise NotFound("tenant", tenant_id)
    return row


def issue_key(
    session: Session,
    tenant_id: str,
    name: str,
    *,
    is_admin: bool = False,
    token: str | None = None,
) -> IssuedKey:
    """A new key for the tenant; `token` lets a deployment provision a known secret."""
    token = token or new_token()
    row = ApiKeyRow(
        id=new_id("key"),
        tenant_id=tenant_id,
        name=name,
        prefix=token[:12],
        secret_sha256=secret_sha256(token),
        is_admin=is_admin,
        webhook_secret=new_webhook_secret(),
    )
    session.add(row)
    session.flush()
    return IssuedKey(row=row, token=token)


def find_active_key(session: Session, token: str) -> ApiKeyRow | None:
    """The unrevoked key whose secret is `token`, else None."""
    digest = secret_sha256(token)
    row = session.scalar(select(ApiKeyRow).where(ApiKeyRow.secret_sha256 == digest))
    # The index lookup already matched; the constant-time compare keeps timing flat anyway.
    if row is None or not hmac.compare_digest(row.secret_sha256, digest):
        return None
    return None if row.revoked_at is not None else row


def list_keys(session: Session, tenant_id: str) -> list[ApiKeyRow]:
    query = select(ApiKeyRow).where(ApiKeyRow.tenant_id == tenant_id).order_by(ApiKeyRow.id)
    return list(session.scalars(query))


def revoke_key(session: Session, key_id: str, *, tenant_id: str | None) -> ApiKeyRow:
    """Revoke a key of `tenant_id` (None: any tenant's, for the admin)."""
    row = session.get(ApiKeyRow, key_id)
    if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
        raise NotFound("api key", key_id)
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return row


def rotate_webhook_secret(session: Session, key_id: str, *, tenant_id: str | None) -> ApiKeyRow:
    """A new webhook secret for a key of `tenant_id` (None: any tenant's, for the admin);
    webhooks sent from now on are signed with it."""
    row = session.get(ApiKeyRow, key_id)
    if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
        raise NotFound("api key", key_id)
    row.webhook_secret = new_webhook_secret()
    session.flush()
    return row


class RevokedAdminKey(Exception):
    """The configured admin secret is one that was revoked (rotated away, or by hand)."""


@dataclass(frozen=True)
class AdminKeyRotation:
    key: ApiKeyRow
    created: bool
    # the admin keys of other secrets, revoked now
    revoked: list[ApiKeyRow]


def ensure_admin_key(session: Session, token: str) -> AdminKeyRotation:
    """Make the key with this secret the one admin key: created (with the admin tenant)
    if missing, and every other unrevoked admin key revoked, so rotating the configured
    secret after a leak shuts out the old one. Raises RevokedAdminKey when this secret's
    key was revoked: a leaked secret must not come back by configuration."""
    existing = session.scalar(
        select(ApiKeyRow).where(ApiKeyRow.secret_sha256 == secret_sha256(token))
    )
    if existing is not None and existing.revoked_at is not None:
        raise RevokedAdminKey(
            f"the configured admin API key ({existing.prefix}...) was revoked on "
            f"{existing.revoked_at:%Y-%m-%d %H:%M} UTC; configure a new secret"
        )
    if existing is not None and not existing.is_admin:
        raise RevokedAdminKey("the configured admin API key is a tenant's key; use a new secret")
    key = existing
    if key is None:
        tenant = session.scalar(select(TenantRow).where(TenantRow.name == ADMIN_TENANT_NAME))
        if tenant is None:
            tenant = create_tenant(session, ADMIN_TENANT_NAME)
        key = issue_key(session, tenant.id, "admin", is_admin=True, token=token).row
    others = session.scalars(
        select(ApiKeyRow).where(
            ApiKeyRow.is_admin.is_(True),
            ApiKeyRow.revoked_at.is_(None),
            ApiKeyRow.id != key.id,
        )
    )
    revoked = list(others)
    for row in revoked:
        row.revoked_at = utcnow()
    session.flush()
    return AdminKeyRotation(key=key, created=existing is None, revoked=revoked)


# --- usage ------------------------------------------------------------------------------


def storage_bytes(session: Session, tenant_id: str) -> int:
    """Bytes the tenant's uploads and job artifacts hold (shared blobs counted per row:
    each tenant pays for what it stored, whoever else stored the same bytes)."""
    models = select(func.coalesce(func.sum(ModelRow.size_bytes), 0)).where(
        ModelRow.tenant_id == tenant_id
    )
    datasets = select(func.coalesce(func.sum(DatasetRow.size_bytes), 0)).where(
        DatasetRow.tenant_id == tenant_id
    )
    artifacts = (
        select(func.coalesce(func.sum(ArtifactRow.size_bytes), 0))
        .join(JobRow, JobRow.id == ArtifactRow.job_id)
        .where(JobRow.tenant_id == tenant_id)
    )
    return sum(int(session.scalar(query) or 0) for query in (models, datasets, artifacts))


def active_jobs(session: Session, tenant_id: str) -> int:
    query = select(func.count(JobRow.id)).where(
        JobRow.tenant_id == tenant_id, JobRow.state.in_(ACTIVE_STATES)
    )
    return int(session.scalar(query) or 0)


def active_job_specs(session: Session, tenant_id: str) -> list[dict[str, Any]]:
    """The specs of the tenant's queued and running jobs (as many as its quota allows)."""
    query = select(JobRow.spec).where(
        JobRow.tenant_id == tenant_id, JobRow.state.in_(ACTIVE_STATES)
    )
    return list(session.scalars(query))


def lock_for_submission(session: Session, tenant_id: str) -> None:
    """Serialise this tenant's submissions until the transaction ends: the UPDATE takes
    the row lock on PostgreSQL and the write lock on SQLite, so a count of active jobs
    read after it cannot be raced by a concurrent submission."""
    session.execute(
        update(TenantRow)
        .where(TenantRow.id == tenant_id)
        .values(submissions=TenantRow.submissions + 1)
        .execution_options(synchronize_session=False)
    )
