"""Wire schemas of the model and dataset listings (the records are api.schemas')."""

from __future__ import annotations

from pydantic import BaseModel, Field

from api.schemas import DatasetOut, ModelOut


class ModelList(BaseModel):
    items: list[ModelOut]
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null at the end"
    )


class DatasetList(BaseModel):
    items: list[DatasetOut]
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null at the end"
    )
