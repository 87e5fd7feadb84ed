"""A worker's presence: registered once with what the device probe found, beaten with its
busy slots, registered again if its row was forgotten, marked stopped on shutdown."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from core.devices import DeviceReport, Gpu
from service.settings import Settings
from store import workers
from store.db import make_engine, make_sessionmaker, transaction
from store.migrate import upgrade_to_head
from store.tables import WorkerRow, utcnow
from worker.main import consumed_queues, pool_size
from worker.presence import WorkerPresence, service_version

REPORT = DeviceReport(
    onnxruntime_providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
    onnxruntime_cuda=True,
    torch_cuda_build="13.0",
    torch_cuda=True,
    gpus=[Gpu(index=0, name="NVIDIA H200", memory_bytes=150_000_000_000)],
    runtimes={"onnxruntime": ["cpu", "cuda"], "openvino": ["cpu"]},
)


def database(tmp_path: Path) -> sessionmaker[Session]:
    url = f"sqlite:///{tmp_path / 'presence.db'}"
    upgrade_to_head(url)
    return make_sessionmaker(make_engine(url))


def presence(sessions: sessionmaker[Session], tmp_path: Path, probes: list[int]) -> WorkerPresence:
    busy = {"now": 0}

    def probe() -> DeviceReport:
        probes.append(1)
        return REPORT

    return WorkerPresence(
        sessions,
        Settings(data_dir=tmp_path),
        name="gpu-1@host",
        queues=["gpu"],
        concurrency=2,
        active=lambda: busy["now"],
        probe=probe,
    )


def rows(sessions: sessionmaker[Session]) -> list[WorkerRow]:
    with sessions() as session:
        return workers.list_workers(session)


def test_the_first_pass_registers_what_the_probe_found(tmp_path: Path) -> None:
    sessions, probes = database(tmp_path), []
    worker_id = presence(sessions, tmp_path, probes).run_once()
    (row,) = rows(sessions)
    assert row.id == worker_id and row.name == "gpu-1@host"
    assert (row.queues, row.concurrency, row.devices) == (["gpu"], 2, ["cpu", "cuda"])
    assert row.runtimes == {"onnxruntime": ["cpu", "cuda"], "openvino": ["cpu"]}
    assert row.gpus == [{"index": 0, "name": "NVIDIA H200", "memory_bytes": 150_000_000_000}]
    assert row.version == service_version() == "0.1.0"


def test_later_passes_beat_the_same_row_and_probe_only_once(tmp_path: Path) -> None:
    sessions, probes = database(tmp_path), []
    keeper = presence(sessions, tmp_path, probes)
    worker_id = keeper.run_once()
    with transaction(sessions) as session:
        session.execute(update(WorkerRow).values(heartbeat_at=utcnow() - timedelta(seconds=30)))
    before = rows(sessions)[0].heartbeat_at
    assert keeper.run_once() == worker_id
    (row,) = rows(sessions)
    assert row.heartbeat_at > before
    assert probes == [1]


def test_a_forgotten_row_is_registered_again(tmp_path: Path) -> None:
    sessions, probes = database(tmp_path), []
    keeper = presence(sessions, tmp_path, probes)
    first = keeper.run_once()
    with transaction(sessions) as session:
        session.execute(WorkerRow.__table__.delete())
    second = keeper.run_once()
    assert second != first and [row.id for row in rows(sessions)] == [second]


def test_stop_marks_the_row_stopped(tmp_path: Path) -> None:
    sessions, probes = database(tmp_path), []
    keeper = presence(sessions, tmp_path, probes)
    keeper.run_once()
    keeper.stop()
    assert rows(sessions)[0].stopped_at is not None


def test_the_queues_and_pool_size_come_from_the_consumer() -> None:
    consumer = SimpleNamespace(
        task_consumer=SimpleNamespace(
            queues=[SimpleNamespace(name="gpu"), SimpleNamespace(name="cpu")]
        ),
        controller=SimpleNamespace(concurrency=4),
    )
    assert consumed_queues(consumer) == ["cpu", "gpu"]
    assert pool_size(consumer) == 4
    assert pool_size(SimpleNamespace()) == 1
