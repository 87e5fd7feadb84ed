"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter

from api import readiness
from api.deps import BlobsDep, EngineDep, QueueDep
from api.routes.docs import problems
from api.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> Health:
    """The process is up (it does not look at the database or the broker)."""
    return Health()


@router.get("/readyz", responses=problems(503))
def readyz(engine: EngineDep, queue: QueueDep, blobs: BlobsDep) -> Readiness:
    """The database, the broker and the blob store answer; 503 `not_ready` names the
    failing check."""
    return Readiness(checks=readiness.check_ready(engine, queue, blobs))
