"""Which blobs rows still name, and deleting the ones no row names, safely.

A blob is content-addressed: two uploads of the same bytes, or two jobs writing the same
result, name one blob. It may be deleted only when no model, dataset or artifact row
names it, and never while a new row that names it is on its way in. Both sides take the
blob's lock in their transaction: a writer before it (re)publishes the bytes and inserts
its row, a deleter before it looks for rows and deletes the bytes. On PostgreSQL the lock
is an advisory transaction lock keyed by the sha256; on SQLite, whose writers are
serialised anyway, it is the database's write lock, taken by a write that changes
nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from sqlalchemy import exists, select, text
from sqlalchemy.orm import Session, sessionmaker

from store.blobs import BlobStore, check_sha256
from store.db import transaction
from store.tables import ArtifactRow, DatasetRow, ModelRow, RecipeCandidateRow

log = logging.getLogger(__name__)

NAMING_COLUMNS = (
    ModelRow.sha256,
    DatasetRow.sha256,
    ArtifactRow.sha256,
    RecipeCandidateRow.sha256,
    RecipeCandidateRow.float_sha256,
)


def lock(session: Session, sha256: str) -> None:
    """Hold the blob's lock until the session's transaction ends."""
    check_sha256(sha256)
    if session.get_bind().dialect.name == "postgresql":
        # 60 bits of the digest: a signed bigint, and collisions only mean waiting.
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": int(sha256[:15], 16)})
    else:
        session.execute(text("UPDATE tenants SET submissions = submissions WHERE 1 = 0"))


def is_referenced(session: Session, sha256: str) -> bool:
    return any(
        session.scalar(select(exists().where(column == sha256))) for column in NAMING_COLUMNS
    )


def referenced_blobs(session: Session) -> set[str]:
    names: set[str] = set()
    for column in NAMING_COLUMNS:
        names.update(
            sha for sha in session.scalars(select(column).distinct()) if sha is not None
        )
    return names


def delete_if_unreferenced(sessions: sessionmaker[Session], blobs: BlobStore, sha256: str) -> bool:
    """Delete the blob when no row names it (under its lock); True when it was deleted."""
    with transaction(sessions) as session:
        lock(session, sha256)
        if is_referenced(session, sha256):
            return False
        return blobs.delete(sha256)


def release(sessions: sessionmaker[Session], blobs: BlobStore, shas: Iterable[str]) -> list[str]:
    """After rows were deleted (and committed): delete the blobs they named that no other
    row names. A store that fails is logged, not raised: the rows are gone for good and
    retention's garbage collection takes the bytes later. Returns what was deleted."""
    deleted = []
    for sha256 in dict.fromkeys(shas):
        try:
            if delete_if_unreferenced(sessions, blobs, sha256):
                deleted.append(sha256)
        except Exception:
            log.warning("could not delete blob %s; retention will", sha256, exc_info=True)
    return deleted
