"""Uploaded ONNX models."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from api import uploads
from api.auth import CallerDep
from api.deps import BlobsDep, SessionDep, SettingsDep
from api.metrics import MetricsDep
from api.routes.docs import file_upload_body, problems
from api.schemas import ModelOut, model_url
from store import catalog

router = APIRouter(prefix="/v1/models", tags=["models"], responses=problems(401))

ModelId = Annotated[str, Path(min_length=1, max_length=64)]


@router.post(
    "",
    status_code=201,
    openapi_extra=file_upload_body(
        "an ONNX model: one self-contained .onnx file, or, for a model with external data "
        "(over 2 GB), one .zip, .tar or .tar.gz archive holding exactly one .onnx file and "
        "the external data files it references, at their relative paths"
    ),
    responses=problems(413, 415, 422, 429),
)
async def upload_model(
    request: Request,
    response: Response,
    caller: CallerDep,
    session: SessionDep,
    blobs: BlobsDep,
    settings: SettingsDep,
    service_metrics: MetricsDep,
) -> ModelOut:
    """Upload a model as multipart field `file`; it is validated before it is stored.

    An archive is stored as it came; `info.external_data` says whether the model keeps
    weights outside the .onnx, and `info.external_data_files` which files hold them.
    """
    row = await uploads.upload_model(request, session, blobs, settings, caller.tenant_id)
    service_metrics.uploaded("model", row.size_bytes)
    response.headers["Location"] = model_url(row.id)
    return ModelOut.from_row(row)


@router.get("/{model_id}", responses=problems(404))
def get_model(model_id: ModelId, caller: CallerDep, session: SessionDep) -> ModelOut:
    return ModelOut.from_row(catalog.get_model(session, model_id, tenant_id=caller.tenant_id))
