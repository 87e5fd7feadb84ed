"""Retention: expired models, datasets and artifacts are removed with their blobs; what a
running job or a newer row still needs is kept. Run on both blob stores (local files and
the S3 object store) unless a test says otherwise."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from store import catalog, jobs
from store.db import transaction
from store.tables import DatasetRow, JobRow, ModelRow, utcnow
from tests.worker.conftest import StoreFactory, StoreWithDigits
from worker.cleanup import clean_once
from worker.runner import JobRunner

TEN_DAYS = timedelta(days=10)


def age(
    store: StoreWithDigits, table: type[DatasetRow] | type[JobRow] | type[ModelRow], row_id: str
) -> None:
    """Make a row look ten days old."""
    column = "finished_at" if table is JobRow else "created_at"
    with transaction(store.sessions) as session:
        session.execute(
            update(table).where(table.id == row_id).values({column: utcnow() - TEN_DAYS})
        )


def dataset_exists(store: StoreWithDigits, dataset_id: str) -> bool:
    with transaction(store.sessions) as session:
        try:
            catalog.get_dataset(session, dataset_id, tenant_id=None)
        except catalog.NotFound:
            return False
        return True


def sha_of(store: StoreWithDigits, dataset_id: str) -> str:
    with transaction(store.sessions) as session:
        return catalog.get_dataset(session, dataset_id, tenant_id=None).sha256


@pytest.fixture
def make_backend_store(make_store: StoreFactory, blob_backend: dict[str, Any]) -> StoreFactory:
    """The store on each blob backend in turn."""

    def build(**overrides: Any) -> StoreWithDigits:
        return make_store(**blob_backend, **overrides)

    return build


def stored(store: StoreWithDigits) -> list[str]:
    return sorted(info.sha256 for info in store.blobs.list())


def test_an_expired_dataset_loses_its_row_and_file_and_a_newer_one_stays(
    make_backend_store: StoreFactory,
) -> None:
    store = make_backend_store(dataset_retention_days=7)
    old_sha = sha_of(store, store.calibration_id)
    age(store, DatasetRow, store.calibration_id)

    report = clean_once(store.sessions, store.blobs, store.settings, blob_grace_s=0)

    assert report.dataset_ids == [store.calibration_id]
    assert not dataset_exists(store, store.calibration_id)
    assert not store.blobs.exists(old_sha)
    assert dataset_exists(store, store.evaluation_id)
    assert store.blobs.exists(sha_of(store, store.evaluation_id))


def test_a_dataset_a_queued_job_names_is_kept_until_the_job_ends(
    make_backend_store: StoreFactory,
) -> None:
    store = make_backend_store(dataset_retention_days=7)
    job_id = store.submit()
    age(store, DatasetRow, store.calibration_id)

    assert clean_once(store.sessions, store.blobs, store.settings, blob_grace_s=0).dataset_ids == []
    JobRunner(store.settings, store.sessions, store.blobs).run(job_id)
    assert store.job(job_id).state == "succeeded"
    report = clean_once(store.sessions, store.blobs, store.settings, blob_grace_s=0)
    assert store.calibration_id in report.dataset_ids


def test_an_expired_model_goes_with_its_blob_unless_an_active_job_names_it(
    make_backend_store: StoreFactory,
) -> None:
    store = make_backend_store(model_retention_days=7)
    with transaction(store.sessions) as session:
        model_sha = catalog.get_model(session, store.model_id, tenant_id=None).sha256
    job_id = store.submit()
    age(store, ModelRow, store.model_id)

    assert clean_once(store.sessions, store.blobs, store.settings, blob_grace_s=0).model_ids == []
    JobRunner(store.settings, store.sessions, store.blobs).run(job_id)
    report = clean_once(store.sessions, store.blobs, store.settings, blob_grace_s=0)

    assert report.model_ids == [store.model_id]
    assert model_sha in report.removed_blobs and not store.blobs.exists(model_sha)
    with transaction(store.sessions) as session, pytest.raises(catalog.NotFound):
        catalog.get_model(session, store.model_id, tenant_id=None)


def test_expired_artifacts_are_removed_and_the_job_record_keeps_its_metrics(
    make_backend_store: StoreFactory,
) -> None:
    store = make_backend_store(artifact_retention_days=7)
    job_id = store.submit()
    JobRunner(store.settings, store.sessions, store.blobs).run(job_id)
    model_sha = {a.name: a.sha256 for a in store.artifacts(job_id)}["model.onnx"]
    fresh_job = store.submit()
    JobRunner(store.settings, store.sessions, store.blobs).run(fresh_job)
    age(store, JobRow, job_id)

    report = clean_once(store.sessions, store.blobs, store.settings, blob_grace_s=0)

    assert report.artifact_job_ids == [job_id]
    assert store.artifacts(job_id) == []
    assert len(store.artifacts(fresh_job)) == 4  # model, report.json, report.html, manifest
    job = store.job(job_id)
    assert job.state == "succeeded" and job.result["final"]["size_bytes"] > 0
    assert store.events(job_id)[-1].kind == "artifacts_expired"
    # The same bytes are still named by the fresh job's artifact: the file stays.
    fresh_shas = {a.sha256 for a in store.artifacts(fresh_job)}
    assert store.blobs.exists(model_sha) == (model_sha in fresh_shas)
    with transaction(store.sessions) as session:
        assert jobs.list_artifacts(session, job_id) == []


def test_without_retention_settings_nothing_expires(make_backend_store: StoreFactory) -> None:
    store = make_backend_store()
    job_id = store.submit()
    JobRunner(store.settings, store.sessions, store.blobs).run(job_id)
    age(store, DatasetRow, store.calibration_id)
    age(store, ModelRow, store.model_id)
    age(store, JobRow, job_id)
    blobs_before = stored(store)

    report = clean_once(store.sessions, store.blobs, store.settings, blob_grace_s=0)

    assert (report.model_ids, report.dataset_ids, report.artifact_job_ids) == ([], [], [])
    assert report.removed_blobs == []
    assert stored(store) == blobs_before


def test_unnamed_blobs_outlive_the_grace_period_only(make_backend_store: StoreFactory) -> None:
    store = make_backend_store()
    orphan = store.blobs.put([b"bytes no row names"], max_bytes=100).sha256
    named = stored(store)

    spared = clean_once(store.sessions, store.blobs, store.settings, blob_grace_s=3600)
    later = utcnow() + timedelta(hours=2)
    removed = clean_once(store.sessions, store.blobs, store.settings, blob_grace_s=3600, now=later)

    assert spared.removed_blobs == [] and orphan in named
    assert removed.removed_blobs == [orphan]
    assert stored(store) == sorted(set(named) - {orphan})


def test_an_upload_in_flight_of_bytes_stored_long_ago_keeps_its_file(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    """An upload publishes its file just before its row commits: the cleaner must not
    take it in between, even when the same bytes were first stored long ago. (Local files
    only, whose age a test can set; the object store's refresh on publish is checked in
    tests/store/test_blobs.py.)"""
    store = make_store(dataset_retention_days=7)
    sha = sha_of(store, store.calibration_id)
    path = store.blobs.path(sha)
    copy = store.blobs.materialise(sha, tmp_path / "same-bytes.npz")
    old = time.time() - TEN_DAYS.total_seconds()
    os.utime(path, (old, old))
    age(store, DatasetRow, store.calibration_id)

    store.blobs.publish(store.blobs.stage_file(copy))  # the new upload, row not yet written
    report = clean_once(store.sessions, store.blobs, store.settings, blob_grace_s=3600)

    assert report.dataset_ids == [store.calibration_id]  # the old row expired...
    assert sha not in report.removed_blobs and path.exists()  # ...its bytes are spared
    os.utime(path, (old, old))
    assert sha in clean_once(store.sessions, store.blobs, store.settings).removed_blobs
