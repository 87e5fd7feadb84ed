"""Workers on the database: who is alive, which queues they consume, what they can run.

A worker registers when it starts (a new row each start), beats from its parent
process, and marks its row stopped on a clean shutdown. Liveness is always computed
from `heartbeat_at` against a timeout the caller passes (the settings'), never stored.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from store.ids import new_id
from store.tables import WorkerRow, utcnow


@dataclass(frozen=True)
class Capabilities:
    """What a worker says about itself when it registers."""

    name: str
    hostname: str
    pid: int
    queues: list[str]
    concurrency: int
    runtimes: dict[str, list[str]]
    devices: list[str]
    gpus: list[dict[str, Any]] = field(default_factory=list)
    version: str = ""


@dataclass(frozen=True)
class QueueService:
    """The live workers of one queue, as the reaper and the submission check see them."""

    queue: str
    workers: list[WorkerRow]
    # the last heartbeat of any worker (alive or not) that consumed the queue
    last_seen_at: datetime | None

    @property
    def live(self) -> int:
        return len(self.workers)

    @property
    def saturated(self) -> bool:
        """Every live worker runs as many tasks as it has pool processes: a queued job
        is waiting its turn, not lost."""
        return bool(self.workers) and all(w.active >= w.concurrency for w in self.workers)

    def devices(self) -> list[str]:
        return sorted({device for worker in self.workers for device in worker.devices})

    def serves(self, device: str | None = None, runtime: str | None = None) -> bool:
        return any(offers(worker, device, runtime) for worker in self.workers)


def offers(worker: WorkerRow, device: str | None, runtime: str | None) -> bool:
    """The worker runs `runtime` (any, if None) on `device` (any, if None)."""
    if runtime is not None:
        devices = worker.runtimes.get(runtime)
        if devices is None:
            return False
        return device is None or device in devices
    return device is None or device in worker.devices


def register(session: Session, capabilities: Capabilities) -> str:
    """Insert this worker start's row; returns its id (for heartbeats and shutdown)."""
    now = utcnow()
    worker_id = new_id("wrk")
    session.add(
        WorkerRow(
            id=worker_id,
            name=capabilities.name[:200],
            hostname=capabilities.hostname[:255],
            pid=capabilities.pid,
            queues=list(capabilities.queues),
            concurrency=capabilities.concurrency,
            runtimes={name: list(devices) for name, devices in capabilities.runtimes.items()},
            devices=list(capabilities.devices),
            gpus=list(capabilities.gpus),
            version=capabilities.version[:64],
            started_at=now,
            heartbeat_at=now,
            active=0,
        )
    )
    return worker_id


def heartbeat(session: Session, worker_id: str, *, active: int) -> bool:
    """Beat; False when the row is gone (forgotten while this worker was frozen): the
    caller registers again."""
    result = session.execute(
        update(WorkerRow)
        .where(WorkerRow.id == worker_id)
        .values(heartbeat_at=utcnow(), active=active, stopped_at=None)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def mark_stopped(session: Session, worker_id: str) -> None:
    session.execute(
        update(WorkerRow)
        .where(WorkerRow.id == worker_id)
        .values(stopped_at=utcnow(), active=0)
        .execution_options(synchronize_session=False)
    )


def is_live(worker: WorkerRow, *, dead_after_s: float, now: datetime | None = None) -> bool:
    moment = now or utcnow()
    return worker.stopped_at is None and worker.heartbeat_at >= moment - timedelta(
        seconds=dead_after_s
    )


def list_workers(session: Session) -> list[WorkerRow]:
    """Every known worker, newest start first (dead ones until they are forgotten)."""
    return list(session.scalars(select(WorkerRow).order_by(WorkerRow.started_at.desc())))


def live_workers(session: Session, *, dead_after_s: float) -> list[WorkerRow]:
    cutoff = utcnow() - timedelta(seconds=dead_after_s)
    return list(
        session.scalars(
            select(WorkerRow)
            .where(WorkerRow.heartbeat_at >= cutoff, WorkerRow.stopped_at.is_(None))
            .order_by(WorkerRow.started_at)
        )
    )


def queue_services(
    session: Session, queues: Iterable[str], *, dead_after_s: float
) -> dict[str, QueueService]:
    """For each queue: its live workers and when any worker consuming it was last seen."""
    wanted = list(dict.fromkeys(queues))
    now = utcnow()
    rows = list(session.scalars(select(WorkerRow)))
    services = {}
    for queue in wanted:
        consumers = [row for row in rows if queue in row.queues]
        services[queue] = QueueService(
            queue=queue,
            workers=[row for row in consumers if is_live(row, dead_after_s=dead_after_s, now=now)],
            last_seen_at=max((row.heartbeat_at for row in consumers), default=None),
        )
    return services


def forget_dead(session: Session, *, older_than_s: float) -> int:
    """Delete rows whose last beat is older than `older_than_s`; returns how many."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    result = session.execute(delete(WorkerRow).where(WorkerRow.heartbeat_at < cutoff))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def live_counts(session: Session, queues: Sequence[str], *, dead_after_s: float) -> dict[str, int]:
    """Live workers consuming each queue."""
    return {
        queue: service.live
        for queue, service in queue_services(session, queues, dead_after_s=dead_after_s).items()
    }


def count_rows(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(WorkerRow)) or 0)
