"""The admin audit log: one row per action on tenants and API keys, newest first."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.ids import new_id
from store.pages import page
from store.tables import AdminAuditRow


def record(
    session: Session,
    *,
    actor_key_id: str | None,
    action: str,
    target_kind: str,
    target_id: str,
    tenant_id: str | None,
    details: dict[str, Any] | None = None,
) -> AdminAuditRow:
    """Add an entry in the caller's transaction: it is kept exactly when the action is."""
    row = AdminAuditRow(
        id=new_id("aud"),
        actor_key_id=actor_key_id,
        action=action,
        target_kind=target_kind,
        target_id=target_id,
        tenant_id=tenant_id,
        details=details or {},
    )
    session.add(row)
    session.flush()
    return row


def list_entries(
    session: Session, *, limit: int, cursor: str | None, tenant_id: str | None = None
) -> tuple[list[AdminAuditRow], str | None]:
    """One page, newest first; `tenant_id` keeps the entries about that tenant. Raises
    store.jobs.InvalidCursor for a cursor this service did not issue."""
    query = select(AdminAuditRow)
    if tenant_id is not None:
        query = query.where(AdminAuditRow.tenant_id == tenant_id)
    return page(session, query, AdminAuditRow, limit=limit, cursor=cursor)
