"""Tenants and keys as the API sees them: creation, the caller's account, revocation."""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.quotas import Quotas
from api.schemas import QuotasOut, TenantOut, Usage
from service.settings import Settings
from store import tenants


def tenant_out(session: Session, tenant_id: str, settings: Settings) -> TenantOut:
    row = tenants.get_tenant(session, tenant_id)
    quotas = Quotas.of(session, tenant_id, settings)
    return TenantOut(
        id=row.id,
        name=row.name,
        created_at=row.created_at,
        quotas=QuotasOut(
            storage_bytes=quotas.storage_bytes, concurrent_jobs=quotas.concurrent_jobs
        ),
        usage=Usage(
            storage_bytes=tenants.storage_bytes(session, tenant_id),
            active_jobs=tenants.active_jobs(session, tenant_id),
        ),
    )
