"""Jobs that read from and register in MLflow, run in-process against a real tracking
server (tests/services.py: MlflowServer): the failures a registry can cause."""

from __future__ import annotations

import hashlib
import re
import time

from tests.conftest import DigitsFiles
from tests.services import ROOT, MlflowServer, free_port, mlflow_venv
from tests.worker.conftest import StoreFactory, StoreWithDigits
from worker.runner import JobRunner


def run(store: StoreWithDigits, job_id: str) -> str:
    return JobRunner(store.settings, store.sessions, store.blobs).run(job_id)


def test_a_model_version_by_alias_is_fetched_stored_and_named_in_the_spec(
    make_store: StoreFactory, mlflow_server: MlflowServer, digits_files: DigitsFiles
) -> None:
    version = mlflow_server.register_onnx(digits_files.model, "alias-digits", alias="champion")
    store = make_store(mlflow_tracking_uri=mlflow_server.url)
    job_id = store.submit(model_id=None, model_uri="models:/alias-digits@champion")
    assert run(store, job_id) == "succeeded", store.job(job_id).error_message
    job = store.job(job_id)
    assert job.spec["model_uri"] == "models:/alias-digits@champion"  # as the user wrote it
    fetched = [event for event in store.events(job_id) if event.kind == "registry"]
    assert len(fetched) == 1
    assert fetched[0].data["model_uri"] == f"models:/alias-digits/{version}"
    assert fetched[0].data["model_id"] == job.spec["model_id"]
    assert fetched[0].data["sha256"] == hashlib.sha256(digits_files.model.read_bytes()).hexdigest()
    assert job.result.get("registered") is None  # no registry field: nothing registered


def test_a_missing_model_version_fails_the_job_with_mlflow_model_not_found(
    make_store: StoreFactory, mlflow_server: MlflowServer, digits_files: DigitsFiles
) -> None:
    mlflow_server.register_onnx(digits_files.model, "one-version")
    store = make_store(mlflow_tracking_uri=mlflow_server.url)
    for uri in ("models:/one-version/7", "models:/never-registered/1", "models:/one-version@gone"):
        job_id = store.submit(model_id=None, model_uri=uri)
        assert run(store, job_id) == "failed"
        job = store.job(job_id)
        assert job.error_code == "mlflow_model_not_found", job.error_message
        assert uri in job.error_message and mlflow_server.url in job.error_message


def test_an_unreachable_server_fails_the_job_with_mlflow_unreachable(
    make_store: StoreFactory,
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    store = make_store(mlflow_tracking_uri=nobody, mlflow_timeout_s=5)
    job_id = store.submit(model_id=None, model_uri="models:/digits/1")
    assert run(store, job_id) == "failed"
    job = store.job(job_id)
    assert job.error_code == "mlflow_unreachable"
    assert nobody in job.error_message and "SQUEEZE_MLFLOW_TRACKING_URI" in job.error_message


def test_a_version_that_is_not_onnx_fails_with_mlflow_model_not_onnx(
    make_store: StoreFactory, mlflow_server: MlflowServer, tmp_path: object
) -> None:
    from pathlib import Path

    pickle = Path(str(tmp_path)) / "model.pkl"
    pickle.write_bytes(b"not a model squeeze can read")
    mlflow_server.register_onnx(pickle, "sklearn-model")
    store = make_store(mlflow_tracking_uri=mlflow_server.url)
    job_id = store.submit(model_id=None, model_uri="models:/sklearn-model/1")
    assert run(store, job_id) == "failed"
    assert store.job(job_id).error_code == "mlflow_model_not_onnx"


def test_a_failed_registration_keeps_the_job_succeeded_with_a_note(
    make_store: StoreFactory,
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    store = make_store(mlflow_tracking_uri=nobody, mlflow_timeout_s=5)
    job_id = store.submit(registry={"name": "digits-small"})
    assert run(store, job_id) == "succeeded"
    job = store.job(job_id)
    notes = [note for note in job.result["notes"] if note["code"] == "registry_failed"]
    assert len(notes) == 1 and "mlflow_unreachable" in notes[0]["message"]
    assert job.result.get("registered") is None
    events = [event for event in store.events(job_id) if event.kind == "registry"]
    assert [event.data["error_code"] for event in events] == ["mlflow_unreachable"]
    assert "model.onnx" in {artifact.name for artifact in store.artifacts(job_id)}


def test_an_uploaded_model_registers_as_its_file_stem_squeeze_by_default(
    make_store: StoreFactory, mlflow_server: MlflowServer
) -> None:
    store = make_store(mlflow_tracking_uri=mlflow_server.url)
    job_id = store.submit(registry={})  # the upload is digits.onnx
    assert run(store, job_id) == "succeeded"
    registered = store.job(job_id).result["registered"]
    assert (registered["name"], registered["version"]) == ("digits-squeeze", 1)
    events = [event for event in store.events(job_id) if event.kind == "registry"]
    assert [event.data["version"] for event in events] == [1]


def test_the_mlflow_venv_is_built_once_then_reused_with_the_pinned_version(
    mlflow_server: MlflowServer,
) -> None:
    pin = re.search(r'MLFLOW_PIN="mlflow==([^"]+)"', (ROOT / "scripts/mlflow-venv.sh").read_text())
    assert pin is not None
    started = time.monotonic()
    again = mlflow_venv()  # the session's server was started from this venv already
    assert time.monotonic() - started < 10
    assert again == mlflow_server.venv
    assert list(again.glob(f"lib/python*/site-packages/mlflow-{pin.group(1)}.dist-info"))
