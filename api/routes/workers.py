"""The workers that registered: what each consumes and can run (admin keys only)."""

from __future__ import annotations

from fastapi import APIRouter

from api.auth import AdminDep
from api.deps import SessionDep, SettingsDep
from api.routes.docs import problems
from api.worker_schemas import WorkerList, WorkerOut
from store import workers

router = APIRouter(tags=["workers"], responses=problems(401, 403))


@router.get("/v1/workers")
def list_workers(_: AdminDep, session: SessionDep, settings: SettingsDep) -> WorkerList:
    """Admin only: every worker start still remembered, live ones first, newest first:
    queues, pool size and busy slots, runtimes and devices (GPU names and memory),
    version, heartbeat. A worker silent for SQUEEZE_WORKER_DEAD_AFTER_S is not alive."""
    rows = workers.list_workers(session)
    alive = {
        row.id: workers.is_live(row, dead_after_s=settings.worker_dead_after_s) for row in rows
    }
    rows.sort(key=lambda row: not alive[row.id])  # stable: newest first within each group
    queues = sorted({settings.queue_cpu, settings.queue_gpu, *(q for r in rows for q in r.queues)})
    return WorkerList(
        items=[WorkerOut.from_row(row, alive=alive[row.id]) for row in rows],
        live_per_queue=workers.live_counts(
            session, queues, dead_after_s=settings.worker_dead_after_s
        ),
    )
