"""Tenants and API keys. Admin keys create tenants and their first keys; any key reads
its own account and manages its own tenant's keys."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from sqlalchemy.orm import Session

from api.auth import AdminDep, Caller, CallerDep, KeyCacheDep
from api.deps import SessionDep, SettingsDep
from api.routes.docs import problems
from api.schemas import (
    AccountOut,
    ApiKeyCreated,
    ApiKeyIn,
    ApiKeyList,
    ApiKeyOut,
    AuditEntryOut,
    AuditList,
    TenantIn,
    TenantOut,
)
from api.tenant_service import tenant_out
from store import audit, tenants
from store.tables import ApiKeyRow

router = APIRouter(tags=["tenants"], responses=problems(401))

TenantId = Annotated[str, Path(min_length=1, max_length=64)]
KeyId = Annotated[str, Path(min_length=1, max_length=64)]


@router.get("/v1/account")
def read_account(caller: CallerDep, session: SessionDep, settings: SettingsDep) -> AccountOut:
    """The calling key, its tenant, the tenant's quotas and what it uses of them."""
    return AccountOut(
        key_id=caller.key_id,
        is_admin=caller.is_admin,
        tenant=tenant_out(session, caller.tenant_id, settings),
    )


@router.post("/v1/tenants", status_code=201, responses=problems(403, 422))
def create_tenant(
    body: TenantIn,
    response: Response,
    caller: AdminDep,
    session: SessionDep,
    settings: SettingsDep,
) -> TenantOut:
    """Admin only: a new tenant (give it a key with POST /v1/tenants/{id}/api-keys)."""
    row = tenants.create_tenant(
        session,
        body.name,
        quota_storage_bytes=body.quota_storage_bytes,
        quota_concurrent_jobs=body.quota_concurrent_jobs,
    )
    audit.record(
        session,
        actor_key_id=caller.key_id,
        action="tenant.created",
        target_kind="tenant",
        target_id=row.id,
        tenant_id=row.id,
        details={
            "name": row.name,
            "quota_storage_bytes": row.quota_storage_bytes,
            "quota_concurrent_jobs": row.quota_concurrent_jobs,
        },
    )
    response.headers["Location"] = f"/v1/tenants/{row.id}"
    return tenant_out(session, row.id, settings)


@router.get("/v1/tenants/{tenant_id}", responses=problems(403, 404))
def read_tenant(
    tenant_id: TenantId, _: AdminDep, session: SessionDep, settings: SettingsDep
) -> TenantOut:
    return tenant_out(session, tenant_id, settings)


@router.post("/v1/tenants/{tenant_id}/api-keys", status_code=201, responses=problems(403, 404))
def create_tenant_key(
    tenant_id: TenantId, body: ApiKeyIn, caller: AdminDep, session: SessionDep
) -> ApiKeyCreated:
    """Admin only: a key for the tenant. The token is in this answer and nowhere else."""
    tenants.get_tenant(session, tenant_id)
    return _created(session, caller, tenants.issue_key(session, tenant_id, body.name))


@router.get("/v1/api-keys")
def list_keys(caller: CallerDep, session: SessionDep) -> ApiKeyList:
    """The caller's tenant's keys (never their secrets)."""
    rows = tenants.list_keys(session, caller.tenant_id)
    return ApiKeyList(items=[ApiKeyOut.from_row(row) for row in rows])


@router.post("/v1/api-keys", status_code=201)
def create_key(body: ApiKeyIn, caller: CallerDep, session: SessionDep) -> ApiKeyCreated:
    """Another key for the caller's own tenant (never an admin key)."""
    return _created(session, caller, tenants.issue_key(session, caller.tenant_id, body.name))


@router.delete("/v1/api-keys/{key_id}", responses=problems(404))
def revoke_key(
    key_id: KeyId, caller: CallerDep, session: SessionDep, cache: KeyCacheDep
) -> ApiKeyOut:
    """Revoke one of the tenant's keys (an admin may revoke any). It stops working at once
    on this API process, and within the key cache's lifetime (10 s) on others."""
    before = session.get(ApiKeyRow, key_id)
    was_revoked = before is not None and before.revoked_at is not None
    row = tenants.revoke_key(
        session, key_id, tenant_id=None if caller.is_admin else caller.tenant_id
    )
    if not was_revoked:  # revoking again changes nothing: no second entry
        key_audit(session, caller, "api_key.revoked", row)
    cache.forget_key(row.id)
    return ApiKeyOut.from_row(row)


@router.get("/v1/admin/audit", responses=problems(400, 403))
def read_audit_log(
    _: AdminDep,
    session: SessionDep,
    tenant_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: str | None = None,
) -> AuditList:
    """Admin only: what was done to tenants and keys, by which key, newest first; follow
    `next_cursor` for the next page. `tenant_id` keeps the entries about that tenant."""
    rows, next_cursor = audit.list_entries(
        session, limit=limit, cursor=cursor, tenant_id=tenant_id
    )
    return AuditList(items=[AuditEntryOut.from_row(row) for row in rows], next_cursor=next_cursor)


def key_audit(session: Session, caller: Caller, action: str, key: ApiKeyRow) -> None:
    audit.record(
        session,
        actor_key_id=caller.key_id,
        action=action,
        target_kind="api_key",
        target_id=key.id,
        tenant_id=key.tenant_id,
        details={"name": key.name, "prefix": key.prefix},
    )


def _created(session: Session, caller: Caller, issued: tenants.IssuedKey) -> ApiKeyCreated:
    key_audit(session, caller, "api_key.created", issued.row)
    return ApiKeyCreated(
        **ApiKeyOut.from_row(issued.row).model_dump(),
        token=issued.token,
        webhook_secret=issued.row.webhook_secret,
    )
