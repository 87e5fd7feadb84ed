"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter

from api import readiness
from api.deps import BlobsDep, EngineDep, QueueDep, SessionFactoryDep, SettingsDep
from api.routes.docs import problems
from api.schemas import Health, OutboxBacklog, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> Health:
    """The process is up (it does not look at the database or the broker)."""
    return Health()


@router.get("/readyz", responses=problems(503))
def readyz(
    engine: EngineDep,
    queue: QueueDep,
    blobs: BlobsDep,
    sessions: SessionFactoryDep,
    settings: SettingsDep,
) -> Readiness:
    """The database, the broker and the blob store answer; `workers` counts the live
    workers of each queue and `warnings` names a queue no live worker consumes. 503
    `not_ready` names the failing check (a queue in SQUEEZE_READY_REQUIRES_WORKERS_FOR
    without workers is one). `outbox` counts the job messages the broker has not taken
    yet and the oldest one's age (a warning from 10 s on)."""
    report = readiness.check_ready(engine, queue, blobs, sessions, settings)
    backlog = (
        None
        if report.outbox is None
        else OutboxBacklog(pending=report.outbox.pending, oldest_age_s=report.outbox.oldest_age_s)
    )
    return Readiness(
        checks=report.checks, workers=report.workers, warnings=report.warnings, outbox=backlog
    )
