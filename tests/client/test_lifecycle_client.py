"""The client's listing and deleting of models, datasets and jobs, and downloads that the
service redirects to the object store."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from squeeze.client import Client, SqueezeError
from tests.api.conftest import ADMIN_TOKEN, ApiFactory
from tests.client.conftest import client_for
from tests.client.test_client import run_queued, spec
from tests.factories import distinct_copy
from tests.services import ObjectStore


def test_models_and_datasets_are_listed_with_filters_and_pages(
    client: Client, model_file: Path, dataset_file: Path, tmp_path: Path
) -> None:
    first = client.upload_model(model_file)
    # other bytes under the same name (identical bytes would be reused as the first)
    second = client.upload_model(distinct_copy(model_file, tmp_path / model_file.name, "2"))
    dataset = client.upload_dataset(dataset_file)

    page = client.list_models(limit=1)
    assert [m.id for m in page.items] == [second.id] and page.next_cursor is not None
    assert [m.id for m in client.iter_models(page_size=1)] == [second.id, first.id]
    assert [m.id for m in client.list_models(name=model_file.stem.upper()).items] == [
        second.id,
        first.id,
    ]
    assert client.list_models(name="no-such-name").items == []
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    assert [d.id for d in client.list_datasets(created_after=hour_ago).items] == [dataset.id]
    assert client.list_datasets(created_before=hour_ago).items == []
    assert [d.id for d in client.iter_datasets()] == [dataset.id]


def test_a_deleted_model_and_dataset_are_gone(
    client: Client, model_file: Path, dataset_file: Path
) -> None:
    model, dataset = client.upload_model(model_file), client.upload_dataset(dataset_file)
    client.delete_model(model)
    client.delete_dataset(dataset.id)
    for read in (lambda: client.get_model(model.id), lambda: client.get_dataset(dataset.id)):
        with pytest.raises(SqueezeError) as raised:
            read()
        assert raised.value.status == 404
    assert client.account().tenant.usage.storage_bytes == 0


def test_deleting_an_input_of_a_queued_job_raises_in_use(
    client: Client, model_file: Path, dataset_file: Path
) -> None:
    model = client.upload_model(model_file)
    job = client.submit_job(spec(model, client.upload_dataset(dataset_file).id))
    with pytest.raises(SqueezeError) as raised:
        client.delete_model(model)
    assert (raised.value.status, raised.value.code) == (409, "in_use")
    assert job.id in raised.value.detail


def test_a_job_is_deleted_once_cancelled(
    client: Client, model_file: Path, dataset_file: Path
) -> None:
    model, dataset = client.upload_model(model_file), client.upload_dataset(dataset_file)
    job = client.submit_job(spec(model, dataset.id))
    with pytest.raises(SqueezeError) as raised:
        client.delete_job(job)
    assert (raised.value.status, raised.value.code) == (409, "job_active")
    client.cancel_job(job)
    client.delete_job(job.id)
    with pytest.raises(SqueezeError) as gone:
        client.get_job(job)
    assert gone.value.status == 404


@pytest.mark.slow
def test_a_download_redirected_to_the_object_store_arrives_checked(
    make_api: ApiFactory,
    object_store: ObjectStore,
    model_file: Path,
    dataset_file: Path,
    tmp_path: Path,
) -> None:
    service = make_api(
        **object_store.settings_overrides(),
        blob_download_redirect=True,
        measure_runs=3,
        measure_warmup_runs=0,
    )
    with client_for(service, ADMIN_TOKEN) as client:
        job = client.submit_job(
            spec(client.upload_model(model_file), client.upload_dataset(dataset_file).id)
        )
        run_queued(service, job)
        raw = client.http.get(
            f"/v1/jobs/{job.id}/artifacts/model.onnx",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            follow_redirects=False,
        )
        assert raw.status_code == 307  # the service does redirect...
        path = client.download_model(job, tmp_path)  # ...and the client follows
    listed = {artifact.name: artifact for artifact in client.list_artifacts(job)}
    assert hashlib.sha256(path.read_bytes()).hexdigest() == listed["model.onnx"].sha256
