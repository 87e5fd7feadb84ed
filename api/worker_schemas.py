"""Wire schemas of GET /v1/workers (apart from api/schemas.py: one resource, one module)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from store.tables import WorkerRow


class GpuOut(BaseModel):
    index: int
    name: str
    memory_bytes: int


class WorkerOut(BaseModel):
    id: str
    name: str
    hostname: str
    pid: int
    alive: bool
    queues: list[str]
    concurrency: int
    active: int
    runtimes: dict[str, list[str]]
    devices: list[str]
    gpus: list[GpuOut]
    version: str
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None

    @classmethod
    def from_row(cls, row: WorkerRow, *, alive: bool) -> WorkerOut:
        gpus: list[dict[str, Any]] = row.gpus or []
        return cls(
            id=row.id,
            name=row.name,
            hostname=row.hostname,
            pid=row.pid,
            alive=alive,
            queues=list(row.queues),
            concurrency=row.concurrency,
            active=row.active,
            runtimes={name: list(devices) for name, devices in row.runtimes.items()},
            devices=list(row.devices),
            gpus=[GpuOut.model_validate(gpu) for gpu in gpus],
            version=row.version,
            started_at=row.started_at,
            heartbeat_at=row.heartbeat_at,
            stopped_at=row.stopped_at,
        )


class WorkerList(BaseModel):
    items: list[WorkerOut]
    # live workers consuming each queue named by the service's settings or by a worker
    live_per_queue: dict[str, int]
