"""Jobs on a model uploaded as an archive with external data, and how the result is
published: one model.onnx when it fits in one protobuf file, else model.zip."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from core.archive import ArchiveLimits, extract_model
from core.formats import model_files
from store import catalog
from store.db import transaction
from tests.conftest import DigitsFiles
from tests.core.test_archive import folder_files, save_with_external_data, zip_bytes
from tests.worker.conftest import StoreFactory, StoreWithDigits
from worker.runner import JobRunner, package_model


@pytest.fixture(scope="session")
def digits_external(digits_files: DigitsFiles, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits CNN as model.onnx + weights.bin."""
    folder = tmp_path_factory.mktemp("digits-external")
    return save_with_external_data(onnx.load(str(digits_files.model)), folder)


@pytest.fixture(scope="session")
def digits_zip(digits_external: Path) -> bytes:
    return zip_bytes(folder_files(digits_external.parent))


def add_archive_model(store: StoreWithDigits, content: bytes, tmp_path: Path) -> str:
    """Store the archive as uploads do (its bytes are the blob) and return the model id."""
    archive = tmp_path / "upload.zip"
    archive.write_bytes(content)
    staged = store.blobs.stage_file(archive)
    store.blobs.publish(staged)
    with transaction(store.sessions) as session:
        row = catalog.add_model(
            session,
            tenant_id=store.tenant_id,
            filename=archive.name,
            sha256=staged.sha256,
            size_bytes=staged.size_bytes,
            info={},
        )
        return row.id


def runner_for(store: StoreWithDigits) -> JobRunner:
    return JobRunner(store.settings, store.sessions, store.blobs)


def digits_batch(store: StoreWithDigits) -> np.ndarray:
    with np.load(store.blobs.path(_eval_sha(store))) as arrays:
        return np.asarray(arrays["input"][:8])


def _eval_sha(store: StoreWithDigits) -> str:
    with transaction(store.sessions) as session:
        return catalog.get_dataset(session, store.evaluation_id, tenant_id=None).sha256


def test_a_job_on_an_archive_model_succeeds_and_its_model_runs(
    make_store: StoreFactory, digits_zip: bytes, tmp_path: Path
) -> None:
    store = make_store()
    model_id = add_archive_model(store, digits_zip, tmp_path)
    job_id = store.submit(model_id=model_id)

    assert runner_for(store).run(job_id) == "succeeded", store.job(job_id).error_message

    job = store.job(job_id)
    artifacts = {artifact.name: artifact for artifact in store.artifacts(job_id)}
    assert set(artifacts) == {"model.onnx", "report.json", "report.html", "manifest.json"}
    model_path = store.blobs.path(artifacts["model.onnx"].sha256)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": digits_batch(store)})
    assert np.asarray(logits).shape == (8, 10)
    assert job.result["steps"][0]["details"]["quantized_node_counts"]
    report = json.loads(store.blobs.path(artifacts["report.json"].sha256).read_text())
    assert report["model_artifact"]["name"] == "model.onnx"
    assert report["model_artifact"]["external_data"] is False
    assert list((store.settings.work_dir / job_id).rglob("*")) == []  # extraction removed


def test_an_archive_beyond_the_workers_limits_fails_the_job_with_its_code(
    make_store: StoreFactory, digits_zip: bytes, tmp_path: Path
) -> None:
    store = make_store(max_model_archive_members=1)
    job_id = store.submit(model_id=add_archive_model(store, digits_zip, tmp_path))

    assert runner_for(store).run(job_id) == "failed"

    job = store.job(job_id)
    assert job.error_code == "archive_too_many_members"
    assert store.artifacts(job_id) == []


def test_a_final_model_with_external_data_under_the_limit_is_published_as_one_file(
    digits_external: Path, tmp_path: Path
) -> None:
    artifact = package_model(digits_external, tmp_path / "publish")

    assert (artifact.name, artifact.media_type) == ("model.onnx", "application/octet-stream")
    assert model_files(artifact.path) == [artifact.path]
    ort.InferenceSession(str(artifact.path), providers=["CPUExecutionProvider"])


def test_a_final_model_over_the_single_file_limit_is_published_as_a_zip(
    digits_external: Path, digits_files: DigitsFiles, tmp_path: Path
) -> None:
    artifact = package_model(digits_external, tmp_path / "publish", single_file_limit_bytes=4096)

    assert (artifact.name, artifact.media_type) == ("model.zip", "application/zip")
    assert zipfile.ZipFile(artifact.path).namelist() == ["model.onnx", "weights.bin"]
    assert artifact.describe()["external_data"] is True
    extracted = extract_model(artifact.path, tmp_path / "download", ArchiveLimits())
    batch = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run(extracted, batch), run(digits_files.model, batch), rtol=1e-6)


def run(path: Path, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"input": batch})[0])
