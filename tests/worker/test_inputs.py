"""A job's inputs come from the blob store, on both implementations: fetched into the
attempt's work dir (through the worker's cache for the object store); an input gone
before the job reads it fails the job with `input_missing`, saying why."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import delete

from store import catalog
from store.blobs import LocalBlobStore
from store.db import transaction
from store.tables import ModelRow
from tests.worker.conftest import StoreFactory, StoreWithDigits
from worker.runner import JobRunner


@pytest.fixture
def store(make_store: StoreFactory, blob_backend: dict[str, Any]) -> StoreWithDigits:
    return make_store(**blob_backend)


def model_sha(store: StoreWithDigits) -> str:
    with transaction(store.sessions) as session:
        return catalog.get_model(session, store.model_id, tenant_id=None).sha256


def test_a_jobs_inputs_are_fetched_from_the_store_and_its_results_written_back(
    store: StoreWithDigits,
) -> None:
    job_id = store.submit()
    assert JobRunner(store.settings, store.sessions, store.blobs).run(job_id) == "succeeded"
    for artifact in store.artifacts(job_id):
        assert store.blobs.size(artifact.sha256) == artifact.size_bytes
    if not isinstance(store.blobs, LocalBlobStore):  # the object store: through the cache
        cached = {p.name for p in store.settings.blob_cache_dir.glob("??/*")}
        assert model_sha(store) in cached


def test_a_job_whose_input_bytes_are_gone_fails_with_input_missing(
    store: StoreWithDigits,
) -> None:
    store.blobs.delete(model_sha(store))
    job_id = store.submit()
    assert JobRunner(store.settings, store.sessions, store.blobs).run(job_id) == "failed"
    job = store.job(job_id)
    assert job.error_code == "input_missing" and model_sha(store) in job.error_message


def test_a_job_whose_model_was_deleted_fails_with_input_missing(store: StoreWithDigits) -> None:
    job_id = store.submit()
    with transaction(store.sessions) as session:  # deleted behind the API's back
        session.execute(delete(ModelRow).where(ModelRow.id == store.model_id))
    assert JobRunner(store.settings, store.sessions, store.blobs).run(job_id) == "failed"
    job = store.job(job_id)
    assert job.error_code == "input_missing" and store.model_id in job.error_message
