"""Readiness: the service can serve requests only when its database, broker and blob
store answer.

It also says how many live workers consume each queue. A queue with none is a warning
(the answer stays 200: the API serves, and submissions for that queue are refused or
expire by `absent_worker_policy`), unless the queue is in
`settings.ready_requires_workers_for`, where it makes readiness 503 (a supervisor that
restarts a dead embedded worker watches that).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.errors import NotReady
from service.settings import Settings
from store import outbox, workers
from store.blobs import BlobStore
from store.db import ping
from worker.enqueue import JobQueue

logger = logging.getLogger(__name__)


# An outbox message older than this is worth a warning (the broker refuses sends).
OUTBOX_WARN_AGE_S = 10.0


@dataclass(frozen=True)
class ReadinessReport:
    checks: dict[str, str]
    workers: dict[str, int]
    warnings: list[str]
    outbox: outbox.Backlog | None = None


def check_ready(
    engine: Engine,
    queue: JobQueue,
    blobs: BlobStore,
    sessions: sessionmaker[Session] | None = None,
    settings: Settings | None = None,
) -> ReadinessReport:
    """Database, broker and blob store checks ("ok" or why not) and live workers per
    queue; raises NotReady naming what failed (a required queue without workers among
    them)."""
    checks = {
        "database": _run_check("database", lambda: ping(engine)),
        "broker": _run_check("broker", queue.ping),
        "blob_store": _run_check("blob_store", blobs.check),
    }
    counts: dict[str, int] = {}
    warnings: list[str] = []
    backlog: outbox.Backlog | None = None
    if sessions is not None and settings is not None and checks["database"] == "ok":
        names = sorted(
            {settings.queue_cpu, settings.queue_gpu, *settings.ready_requires_workers_for}
        )
        with sessions() as session:
            counts = workers.live_counts(session, names, dead_after_s=settings.worker_dead_after_s)
            backlog = outbox.backlog(session)
        if backlog.oldest_age_s is not None and backlog.oldest_age_s > OUTBOX_WARN_AGE_S:
            warnings.append(
                f"{backlog.pending} job message(s) wait in the outbox for the broker "
                f"(oldest {backlog.oldest_age_s:.0f} s)"
            )
        for name, live in counts.items():
            if live:
                continue
            warnings.append(f"no live worker consumes queue {name!r}")
            if name in settings.ready_requires_workers_for:
                checks[f"workers:{name}"] = f"failed: no live worker consumes queue {name!r}"
    if any(status != "ok" for status in checks.values()):
        raise NotReady(checks, None if backlog is None else asdict(backlog))
    return ReadinessReport(checks=checks, workers=counts, warnings=warnings, outbox=backlog)


def _run_check(name: str, check: Callable[[], None]) -> str:
    try:
        check()
    except Exception as exc:
        logger.warning("readiness check %s failed", name, exc_info=True)
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        return f"failed: {reason}"
    return "ok"
