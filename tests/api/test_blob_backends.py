"""Uploads and downloads end to end through the API, on each blob store: local files and
the S3 object store (a real SeaweedFS). The same tests run on both."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from store import jobs
from store.blobs import BlobStore
from store.tables import ArtifactRow
from tests.api.conftest import Api, ApiFactory, assert_problem
from worker.runner import JobRunner

FAST_MEASURING = {"measure_runs": 3, "measure_warmup_runs": 0}


@pytest.fixture
def backend_api(make_api: ApiFactory, blob_backend: dict[str, Any]) -> Api:
    return make_api(**blob_backend, **FAST_MEASURING)


def blobs_of(api: Api) -> BlobStore:
    store = api.client.app.state.services.blobs  # type: ignore[attr-defined]
    assert isinstance(store, BlobStore)
    return store


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_job(api: Api, job_id: str) -> str:
    services = api.client.app.state.services  # type: ignore[attr-defined]
    return JobRunner(api.settings, services.sessions, services.blobs).run(job_id)


def test_the_api_uses_the_configured_store(backend_api: Api, blob_backend: dict[str, Any]) -> None:
    assert blobs_of(backend_api).kind == blob_backend["blob_store"]
    ready = backend_api.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["blob_store"] == "ok"


def test_an_upload_is_stored_under_its_sha256_and_reads_back_the_same(
    backend_api: Api, model_file: Path, dataset_file: Path
) -> None:
    for path, route in ((model_file, "/v1/models"), (dataset_file, "/v1/datasets")):
        body = backend_api.upload(route, path.read_bytes(), path.name).json()
        assert body["sha256"] == sha(path.read_bytes())
        assert b"".join(blobs_of(backend_api).iter_chunks(body["sha256"])) == path.read_bytes()
    assert list(blobs_of(backend_api).staging_dir.iterdir()) == []


def test_an_upload_over_the_size_cap_stores_nothing(
    make_api: ApiFactory, blob_backend: dict[str, Any], model_file: Path
) -> None:
    api = make_api(**blob_backend, max_model_bytes=1000)
    assert_problem(api.upload_model(model_file), 413, "payload_too_large")
    assert list(blobs_of(api).list()) == []
    assert list(blobs_of(api).staging_dir.iterdir()) == []


def test_an_invalid_upload_stores_nothing(backend_api: Api) -> None:
    assert_problem(backend_api.upload("/v1/models", b"not onnx at all"), 422, "invalid_model")
    assert list(blobs_of(backend_api).list()) == []


def test_deleting_an_upload_removes_its_bytes_from_the_store(
    backend_api: Api, dataset_file: Path
) -> None:
    body = backend_api.upload_dataset(dataset_file).json()
    assert blobs_of(backend_api).exists(body["sha256"])
    assert backend_api.client.delete(f"/v1/datasets/{body['id']}").status_code == 204
    assert not blobs_of(backend_api).exists(body["sha256"])


@pytest.mark.slow
def test_a_jobs_artifacts_download_intact_from_the_store(
    backend_api: Api, model_file: Path, dataset_file: Path
) -> None:
    spec = {
        "model_id": backend_api.model_id(model_file),
        "eval_dataset_id": backend_api.dataset_id(dataset_file),
        "steps": [{"method": "quantize", "mode": "dynamic"}],
    }
    job_id = backend_api.submit(spec).json()["id"]
    assert run_job(backend_api, job_id) == "succeeded"

    items = backend_api.client.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]
    assert {item["name"] for item in items} >= {"model.onnx", "report.json", "manifest.json"}
    for item in items:
        response = backend_api.client.get(f"/v1/jobs/{job_id}/artifacts/{item['name']}")
        assert response.status_code == 200, response.text
        assert sha(response.content) == item["sha256"] == response.headers["etag"].strip('"')
        assert int(response.headers["content-length"]) == item["size_bytes"]
        assert response.headers["content-type"].startswith(item["media_type"].split(";")[0])
        assert item["name"] in response.headers["content-disposition"]
    report = backend_api.client.get(f"/v1/jobs/{job_id}/artifacts/report.json").json()
    assert report["final"] == backend_api.client.get(f"/v1/jobs/{job_id}").json()["result"]["final"]


@pytest.mark.slow
def test_downloads_redirect_to_a_presigned_url_when_the_operator_enables_it(
    make_api: ApiFactory, blob_backend: dict[str, Any], model_file: Path, dataset_file: Path
) -> None:
    api = make_api(**blob_backend, **FAST_MEASURING, blob_download_redirect=True)
    spec = {
        "model_id": api.model_id(model_file),
        "eval_dataset_id": api.dataset_id(dataset_file),
        "steps": [{"method": "quantize", "mode": "dynamic"}],
    }
    job_id = api.submit(spec).json()["id"]
    assert run_job(api, job_id) == "succeeded"
    listed = {i["name"]: i for i in api.client.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]}

    response = api.client.get(f"/v1/jobs/{job_id}/artifacts/model.onnx", follow_redirects=False)

    if blob_backend["blob_store"] == "local":  # no presigned URLs: the file itself
        assert response.status_code == 200
        assert sha(response.content) == listed["model.onnx"]["sha256"]
        return
    assert response.status_code == 307
    location = response.headers["location"]
    assert location.startswith(str(blob_backend["s3_endpoint_url"]))
    fetched = httpx.get(location)  # no API key: the URL itself is the permission
    assert fetched.status_code == 200
    assert sha(fetched.content) == listed["model.onnx"]["sha256"]


def test_an_artifact_whose_bytes_are_gone_is_a_404(backend_api: Api, model_file: Path) -> None:
    """A row naming bytes the store lost (a bucket emptied by hand): a clear 404."""
    body = backend_api.upload_model(model_file).json()
    blobs_of(backend_api).delete(body["sha256"])
    tenant_id = backend_api.client.get("/v1/account").json()["tenant"]["id"]
    sessions = backend_api.client.app.state.services.sessions  # type: ignore[attr-defined]
    with sessions.begin() as session:
        job, _ = jobs.create_job(
            session,
            tenant_id=tenant_id,
            spec={},
            queue="cpu",
            request_sha256="0" * 64,
            idempotency_key=None,
        )
        session.add(
            ArtifactRow(
                job_id=job.id,
                name="model.onnx",
                media_type="application/octet-stream",
                sha256=body["sha256"],
                size_bytes=body["size_bytes"],
            )
        )
    response = backend_api.client.get(f"/v1/jobs/{job.id}/artifacts/model.onnx")
    assert_problem(response, 404, "blob_missing")
