"""Uploaded ONNX models."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from api import catalog_service, uploads
from api.auth import CallerDep
from api.catalog_schemas import ModelList
from api.deps import BlobsDep, SessionDep, SessionFactoryDep, SettingsDep
from api.metrics import MetricsDep
from api.routes.catalog_query import CatalogQueryDep, still_stored
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
    responses={
        200: {"description": "these bytes were uploaded before: the earlier record, reused"},
        **problems(413, 415, 422, 429),
    },
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

    Bytes this account already uploaded as a model (same sha256) are not stored twice:
    the answer is 200 with the earlier record and `reused: true` (its id and file name);
    `GET /v1/models?sha256=` asks first, without sending the file.
    """
    stored = await uploads.upload_model(request, session, blobs, settings, caller.tenant_id)
    # received and accepted either way (the metric counts traffic, not storage)
    service_metrics.uploaded("model", stored.row.size_bytes)
    if stored.reused:
        response.status_code = 200
    response.headers["Location"] = model_url(stored.row.id)
    return ModelOut.from_row(stored.row, reused=stored.reused)


@router.get("/{model_id}", responses=problems(404))
def get_model(model_id: ModelId, caller: CallerDep, session: SessionDep) -> ModelOut:
    return ModelOut.from_row(catalog.get_model(session, model_id, tenant_id=caller.tenant_id))


@router.get("", responses=problems(400))
def list_models(
    caller: CallerDep, session: SessionDep, blobs: BlobsDep, query: CatalogQueryDep
) -> ModelList:
    """The caller's models, newest first; follow `next_cursor` for the next page."""
    rows, next_cursor = catalog_service.list_models(
        session,
        tenant_id=caller.tenant_id,
        filters=query.filters,
        limit=query.limit,
        cursor=query.cursor,
    )
    rows = still_stored(rows, query, blobs)
    return ModelList(items=[ModelOut.from_row(row) for row in rows], next_cursor=next_cursor)


@router.delete("/{model_id}", status_code=204, responses=problems(404, 409))
def delete_model(
    model_id: ModelId, caller: CallerDep, sessions: SessionFactoryDep, blobs: BlobsDep
) -> Response:
    """Delete the model, and its file unless another upload holds the same bytes; the
    account's storage usage drops at once. 409 `in_use` names a queued or running job
    that still reads it."""
    catalog_service.delete_model(sessions, blobs, model_id, tenant_id=caller.tenant_id)
    return Response(status_code=204)
