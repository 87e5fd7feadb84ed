"""Uploaded `.npz` datasets."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from api import catalog_service, uploads
from api.auth import CallerDep
from api.catalog_schemas import DatasetList
from api.deps import BlobsDep, SessionDep, SessionFactoryDep, SettingsDep
from api.metrics import MetricsDep
from api.routes.catalog_query import CatalogQueryDep, still_stored
from api.routes.docs import file_upload_body, problems
from api.schemas import DatasetOut, dataset_url
from store import catalog

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=problems(401))

DatasetId = Annotated[str, Path(min_length=1, max_length=64)]


@router.post(
    "",
    status_code=201,
    openapi_extra=file_upload_body("an .npz of named numeric arrays (no pickled objects)"),
    responses={
        200: {"description": "these bytes were uploaded before: the earlier record, reused"},
        **problems(413, 415, 422, 429),
    },
)
async def upload_dataset(
    request: Request,
    response: Response,
    caller: CallerDep,
    session: SessionDep,
    blobs: BlobsDep,
    settings: SettingsDep,
    service_metrics: MetricsDep,
) -> DatasetOut:
    """Upload a dataset as multipart field `file`; it is validated before it is stored.

    Bytes this account already uploaded as a dataset (same sha256) are not stored twice:
    the answer is 200 with the earlier record and `reused: true`; `GET
    /v1/datasets?sha256=` asks first, without sending the file.
    """
    stored = await uploads.upload_dataset(request, session, blobs, settings, caller.tenant_id)
    # received and accepted either way (the metric counts traffic, not storage)
    service_metrics.uploaded("dataset", stored.row.size_bytes)
    if stored.reused:
        response.status_code = 200
    response.headers["Location"] = dataset_url(stored.row.id)
    return DatasetOut.from_row(stored.row, reused=stored.reused)


@router.get("/{dataset_id}", responses=problems(404))
def get_dataset(dataset_id: DatasetId, caller: CallerDep, session: SessionDep) -> DatasetOut:
    return DatasetOut.from_row(catalog.get_dataset(session, dataset_id, tenant_id=caller.tenant_id))


@router.get("", responses=problems(400))
def list_datasets(
    caller: CallerDep, session: SessionDep, blobs: BlobsDep, query: CatalogQueryDep
) -> DatasetList:
    """The caller's datasets, newest first; follow `next_cursor` for the next page."""
    rows, next_cursor = catalog_service.list_datasets(
        session,
        tenant_id=caller.tenant_id,
        filters=query.filters,
        limit=query.limit,
        cursor=query.cursor,
    )
    rows = still_stored(rows, query, blobs)
    return DatasetList(items=[DatasetOut.from_row(row) for row in rows], next_cursor=next_cursor)


@router.delete("/{dataset_id}", status_code=204, responses=problems(404, 409))
def delete_dataset(
    dataset_id: DatasetId, caller: CallerDep, sessions: SessionFactoryDep, blobs: BlobsDep
) -> Response:
    """Delete the dataset, and its file unless another upload holds the same bytes; the
    account's storage usage drops at once. 409 `in_use` names a queued or running job
    that still reads it."""
    catalog_service.delete_dataset(sessions, blobs, dataset_id, tenant_id=caller.tenant_id)
    return Response(status_code=204)
