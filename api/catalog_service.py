"""Listing and deleting a tenant's models, datasets and jobs.

A delete commits the rows first, then releases the blobs they named that no other row
names (content-addressed bytes may be shared by several uploads or jobs); the tenant's
usage, computed from its rows, is down at once.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from api.errors import InvalidSpec
from store import blob_refs, catalog, lifecycle
from store.blobs import BlobStore
from store.catalog import Filters
from store.db import transaction
from store.tables import DatasetRow, ModelRow


def filters(
    name: str | None,
    created_after: datetime | None,
    created_before: datetime | None,
    sha256: str | None = None,
) -> Filters:
    """Listing filters; a date without a zone is taken as UTC. Raises InvalidSpec for a
    date that has no UTC time (year 1 at +14:00, year 9999 at -23:59)."""
    return Filters(
        name=name,
        created_after=_utc(created_after, "created_after"),
        created_before=_utc(created_before, "created_before"),
        sha256=sha256,
    )


def _utc(value: datetime | None, field: str) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        # As the column binds it; overflowing there answered 500.
        return value.astimezone(UTC)
    except OverflowError:
        raise InvalidSpec(f"{field}: {value.isoformat()} is outside the UTC calendar") from None


def list_models(
    session: Session, *, tenant_id: str, filters: Filters, limit: int, cursor: str | None
) -> tuple[list[ModelRow], str | None]:
    return catalog.list_models(
        session, tenant_id=tenant_id, filters=filters, limit=limit, cursor=cursor
    )


def list_datasets(
    session: Session, *, tenant_id: str, filters: Filters, limit: int, cursor: str | None
) -> tuple[list[DatasetRow], str | None]:
    return catalog.list_datasets(
        session, tenant_id=tenant_id, filters=filters, limit=limit, cursor=cursor
    )


def delete_model(
    sessions: sessionmaker[Session], blobs: BlobStore, model_id: str, *, tenant_id: str
) -> None:
    """NotFound for another tenant's or an unknown model; InUse while a job reads it."""
    with transaction(sessions) as session:
        sha256 = lifecycle.delete_model(session, model_id, tenant_id=tenant_id)
    blob_refs.release(sessions, blobs, [sha256])


def delete_dataset(
    sessions: sessionmaker[Session], blobs: BlobStore, dataset_id: str, *, tenant_id: str
) -> None:
    with transaction(sessions) as session:
        sha256 = lifecycle.delete_dataset(session, dataset_id, tenant_id=tenant_id)
    blob_refs.release(sessions, blobs, [sha256])


def delete_job(
    sessions: sessionmaker[Session], blobs: BlobStore, job_id: str, *, tenant_id: str
) -> None:
    """JobNotFound; JobActive for a queued or running job (cancel it first)."""
    with transaction(sessions) as session:
        shas = lifecycle.delete_job(session, job_id, tenant_id=tenant_id)
    blob_refs.release(sessions, blobs, shas)
