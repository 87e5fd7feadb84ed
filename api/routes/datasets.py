"""Uploaded `.npz` datasets."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from api import uploads
from api.auth import CallerDep
from api.deps import BlobsDep, SessionDep, SettingsDep
from api.metrics import MetricsDep
from api.routes.docs import file_upload_body, problems
from api.schemas import DatasetOut, dataset_url
from store import catalog

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=problems(401))

DatasetId = Annotated[str, Path(min_length=1, max_length=64)]


@router.post(
    "",
    status_code=201,
    openapi_extra=file_upload_body("an .npz of named numeric arrays (no pickled objects)"),
    responses=problems(413, 415, 422, 429),
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
    """Upload a dataset as multipart field `file`; it is validated before it is stored."""
    row = await uploads.upload_dataset(request, session, blobs, settings, caller.tenant_id)
    service_metrics.uploaded("dataset", row.size_bytes)
    response.headers["Location"] = dataset_url(row.id)
    return DatasetOut.from_row(row)


@router.get("/{dataset_id}", responses=problems(404))
def get_dataset(dataset_id: DatasetId, caller: CallerDep, session: SessionDep) -> DatasetOut:
    return DatasetOut.from_row(catalog.get_dataset(session, dataset_id, tenant_id=caller.tenant_id))
