"""A store on disk (SQLite or PostgreSQL) with the digits model and data uploaded."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from service.settings import Settings
from store import catalog, jobs, tenants
from store.blobs import BlobStore, open_blob_store
from store.db import make_engine, make_sessionmaker, transaction
from store.migrate import upgrade_to_head
from tests.conftest import DigitsFiles
from tests.services import fast_test_settings


@dataclass
class StoreWithDigits:
    settings: Settings
    sessions: sessionmaker[Session]
    blobs: BlobStore
    tenant_id: str
    model_id: str
    calibration_id: str
    evaluation_id: str

    def spec(self, **overrides: Any) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "model_id": self.model_id,
            "calibration_dataset_id": self.calibration_id,
            "eval_dataset_id": self.evaluation_id,
            "steps": [{"method": "quantize", "mode": "static"}],
            "batch_size": 8,
        }
        spec.update(overrides)
        return spec

    def submit(self, **overrides: Any) -> str:
        with transaction(self.sessions) as session:
            job, _ = jobs.create_job(
                session,
                tenant_id=self.tenant_id,
                spec=self.spec(**overrides),
                queue=self.settings.queue_cpu,
                request_sha256="0" * 64,
                idempotency_key=None,
            )
            return job.id

    def job(self, job_id: str) -> Any:
        with transaction(self.sessions) as session:
            return jobs.get_job(session, job_id, tenant_id=None)

    def artifacts(self, job_id: str) -> list[Any]:
        with transaction(self.sessions) as session:
            return jobs.list_artifacts(session, job_id)

    def events(self, job_id: str) -> list[Any]:
        with transaction(self.sessions) as session:
            return jobs.list_events(session, job_id, after_id=0, limit=10_000)


def upload_digits(settings: Settings, digits: DigitsFiles) -> StoreWithDigits:
    settings.ensure_dirs()
    upgrade_to_head(settings.resolved_database_url)
    sessions = make_sessionmaker(make_engine(settings.resolved_database_url))
    blobs = open_blob_store(settings)
    with transaction(sessions) as session:
        tenant_id = tenants.create_tenant(session, "worker-tests").id
    ids = []
    for path, add in (
        (digits.model, catalog.add_model),
        (digits.calibration, catalog.add_dataset),
        (digits.evaluation, catalog.add_dataset),
    ):
        staged = blobs.stage_file(path)
        blobs.publish(staged)
        with transaction(sessions) as session:
            row = add(
                session,
                tenant_id=tenant_id,
                filename=path.name,
                sha256=staged.sha256,
                size_bytes=staged.size_bytes,
                info={},
            )
            ids.append(row.id)
    return StoreWithDigits(settings, sessions, blobs, tenant_id, *ids)


StoreFactory = Callable[..., StoreWithDigits]


@pytest.fixture
def make_store(tmp_path: Path, digits_files: DigitsFiles) -> StoreFactory:
    def build(**settings_overrides: Any) -> StoreWithDigits:
        return upload_digits(
            fast_test_settings(tmp_path / "data", **settings_overrides), digits_files
        )

    return build
