"""Uploaded models and datasets: their rows (the files are blobs named by sha256).

Reads take the caller's tenant: another tenant's row is reported exactly like a missing
one, so ids reveal nothing across tenants. The worker reads unscoped (tenant None): it
runs jobs that were checked when they were submitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from store.ids import new_id
from store.pages import page
from store.tables import DatasetRow, ModelRow


class NotFound(Exception):
    def __init__(self, kind: str, item_id: str) -> None:
        super().__init__(f"{kind} {item_id!r} does not exist")
        self.kind = kind
        self.item_id = item_id


RowT = TypeVar("RowT", ModelRow, DatasetRow)


def add_model(
    session: Session,
    *,
    tenant_id: str,
    filename: str,
    sha256: str,
    size_bytes: int,
    info: dict[str, Any],
) -> ModelRow:
    row = ModelRow(
        id=new_id("mdl"),
        tenant_id=tenant_id,
        filename=filename,
        sha256=sha256,
        size_bytes=size_bytes,
        info=info,
    )
    session.add(row)
    session.flush()
    return row


def add_dataset(
    session: Session,
    *,
    tenant_id: str,
    filename: str,
    sha256: str,
    size_bytes: int,
    info: dict[str, Any],
) -> DatasetRow:
    row = DatasetRow(
        id=new_id("ds"),
        tenant_id=tenant_id,
        filename=filename,
        sha256=sha256,
        size_bytes=size_bytes,
        info=info,
    )
    session.add(row)
    session.flush()
    return row


def get_model(session: Session, model_id: str, *, tenant_id: str | None) -> ModelRow:
    return _owned(session, ModelRow, "model", model_id, tenant_id)


def get_dataset(session: Session, dataset_id: str, *, tenant_id: str | None) -> DatasetRow:
    return _owned(session, DatasetRow, "dataset", dataset_id, tenant_id)


def find_model_by_sha256(session: Session, tenant_id: str, sha256: str) -> ModelRow | None:
    """The tenant's oldest model holding exactly these bytes, if any."""
    return _by_sha256(session, ModelRow, tenant_id, sha256)


def find_dataset_by_sha256(session: Session, tenant_id: str, sha256: str) -> DatasetRow | None:
    return _by_sha256(session, DatasetRow, tenant_id, sha256)


def _by_sha256(session: Session, table: type[RowT], tenant_id: str, sha256: str) -> RowT | None:
    query = (
        select(table)
        .where(table.tenant_id == tenant_id, table.sha256 == sha256)
        .order_by(table.created_at, table.id)
        .limit(1)
    )
    return session.scalars(query).first()


def _owned(
    session: Session, table: type[RowT], kind: str, item_id: str, tenant_id: str | None
) -> RowT:
    row = session.get(table, item_id)
    if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
        raise NotFound(kind, item_id)
    return row


@dataclass(frozen=True)
class Filters:
    """What a listing keeps: file names containing `name` (any case), created in
    [created_after, created_before), holding the bytes with this `sha256`."""

    name: str | None = None
    sha256: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


def list_models(
    session: Session, *, tenant_id: str, filters: Filters, limit: int, cursor: str | None
) -> tuple[list[ModelRow], str | None]:
    """The tenant's models, newest first (InvalidCursor for a cursor not issued here)."""
    return _list(session, ModelRow, tenant_id, filters, limit, cursor)


def list_datasets(
    session: Session, *, tenant_id: str, filters: Filters, limit: int, cursor: str | None
) -> tuple[list[DatasetRow], str | None]:
    return _list(session, DatasetRow, tenant_id, filters, limit, cursor)


def _list(
    session: Session,
    table: type[RowT],
    tenant_id: str,
    filters: Filters,
    limit: int,
    cursor: str | None,
) -> tuple[list[RowT], str | None]:
    query = select(table).where(table.tenant_id == tenant_id)
    if filters.name:
        query = query.where(
            func.lower(table.filename).contains(filters.name.lower(), autoescape=True)
        )
    if filters.sha256:
        query = query.where(table.sha256 == filters.sha256.lower())
    if filters.created_after is not None:
        query = query.where(table.created_at >= filters.created_after)
    if filters.created_before is not None:
        query = query.where(table.created_at < filters.created_before)
    return page(session, query, table, limit=limit, cursor=cursor)
