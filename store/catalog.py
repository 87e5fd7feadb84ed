"""Uploaded models and datasets: their rows (the files are blobs named by sha256)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from store.ids import new_id
from store.tables import DatasetRow, ModelRow


class NotFound(Exception):
    def __init__(self, kind: str, item_id: str) -> None:
        super().__init__(f"{kind} {item_id!r} does not exist")
        self.kind = kind
        self.item_id = item_id


def add_model(
    session: Session, *, filename: str, sha256: str, size_bytes: int, info: dict[str, Any]
) -> ModelRow:
    row = ModelRow(
        id=new_id("mdl"), filename=filename, sha256=sha256, size_bytes=size_bytes, info=info
    )
    session.add(row)
    session.flush()
    return row


def add_dataset(
    session: Session, *, filename: str, sha256: str, size_bytes: int, info: dict[str, Any]
) -> DatasetRow:
    row = DatasetRow(
        id=new_id("ds"), filename=filename, sha256=sha256, size_bytes=size_bytes, info=info
    )
    session.add(row)
    session.flush()
    return row


def get_model(session: Session, model_id: str) -> ModelRow:
    row = session.get(ModelRow, model_id)
    if row is None:
        raise NotFound("model", model_id)
    return row


def get_dataset(session: Session, dataset_id: str) -> DatasetRow:
    row = session.get(DatasetRow, dataset_id)
    if row is None:
        raise NotFound("dataset", dataset_id)
    return row
