"""Prometheus scrape endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from api.auth import AdminDep
from api.metrics import MetricsDep
from api.routes.docs import problems

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}, **problems(401, 403)},
)
def metrics(_: AdminDep, service_metrics: MetricsDep) -> Response:
    """Prometheus text exposition; needs the admin key (`Authorization: Bearer ...`,
    which Prometheus sends with `authorization: {credentials_file: ...}`)."""
    return Response(service_metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
