"""Keyset pagination, newest first, over any table with `created_at` and `id`: the cursor
(opaque to clients) is the created_at and id of a page's last row, as for jobs."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import Session

from store.jobs import decode_cursor

RowT = TypeVar("RowT")


def encode_cursor(created_at: datetime, row_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def page(
    session: Session, query: Select[RowT], table: Any, *, limit: int, cursor: str | None
) -> tuple[list[RowT], str | None]:
    """One page of `query`'s rows and the cursor of the next (None on the last page).
    Raises store.jobs.InvalidCursor for a cursor this service did not issue."""
    query = query.order_by(table.created_at.desc(), table.id.desc())
    if cursor is not None:
        created_at, row_id = decode_cursor(cursor)
        query = query.where(
            or_(
                table.created_at < created_at,
                and_(table.created_at == created_at, table.id < row_id),
            )
        )
    rows = list(session.scalars(query.limit(limit + 1)))
    if len(rows) <= limit:
        return rows, None
    last: Any = rows[limit - 1]
    return rows[:limit], encode_cursor(last.created_at, last.id)
