"""The query of a catalog listing (models, datasets): filters and a page, one definition
for both routes so their parameters and documentation cannot drift apart."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Protocol, TypeVar

from fastapi import Depends, Query

from api import catalog_service
from store.blobs import BlobStore
from store.catalog import Filters


@dataclass(frozen=True)
class CatalogQuery:
    filters: Filters
    limit: int
    cursor: str | None

    @property
    def asks_before_upload(self) -> bool:
        return self.filters.sha256 is not None


def catalog_query(
    name: Annotated[
        str | None, Query(max_length=255, description="file names containing this (any case)")
    ] = None,
    created_after: Annotated[
        datetime | None, Query(description="created at or after (ISO 8601; UTC if no zone)")
    ] = None,
    created_before: Annotated[datetime | None, Query(description="created before")] = None,
    sha256: Annotated[
        str | None,
        Query(
            pattern="^[0-9a-fA-F]{64}$",
            description="only the upload holding exactly these bytes: ask before uploading",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: str | None = None,
) -> CatalogQuery:
    return CatalogQuery(
        filters=catalog_service.filters(name, created_after, created_before, sha256),
        limit=limit,
        cursor=cursor,
    )


CatalogQueryDep = Annotated[CatalogQuery, Depends(catalog_query)]


class _Stored(Protocol):
    sha256: str


Row = TypeVar("Row", bound=_Stored)


def still_stored(rows: Sequence[Row], query: CatalogQuery, blobs: BlobStore) -> list[Row]:
    """The rows to answer with. Asked before an upload (by sha256), a record whose bytes
    are gone must be uploaded again, so it is left out."""
    if not query.asks_before_upload:
        return list(rows)
    return [row for row in rows if blobs.exists(row.sha256)]
