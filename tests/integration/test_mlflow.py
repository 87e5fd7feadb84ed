"""MLflow end to end: a real Celery worker runs a job whose model is a version in a real
MLflow tracking server, and registers the compressed model there as the next version;
what the server then holds is read back with MLflow's own client."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.conftest import DigitsFiles
from tests.integration.conftest import DeploymentFactory, download
from tests.services import MlflowServer

READ_BACK = """
import hashlib, json, os, sys
import mlflow
from mlflow import MlflowClient

name, number = sys.argv[1:3]
client = MlflowClient()
version = client.get_model_version(name, number)
run = client.get_run(version.run_id)
model_dir = mlflow.artifacts.download_artifacts(f"models:/{name}/{number}")
print(json.dumps({
    "version_tags": version.tags,
    "run_tags": run.data.tags,
    "metrics": run.data.metrics,
    "params": run.data.params,
    "status": run.info.status,
    "run_files": sorted(a.path for a in client.list_artifacts(version.run_id)),
    "model_files": sorted(os.listdir(model_dir)),
    "model_sha256": hashlib.sha256(
        open(os.path.join(model_dir, "model.onnx"), "rb").read()
    ).hexdigest(),
    "mlmodel": open(os.path.join(model_dir, "MLmodel")).read(),
}))
"""


@pytest.mark.parametrize("deploy", ["postgres_redis"], indirect=True)
def test_a_job_compresses_an_mlflow_model_and_registers_the_next_version(
    deploy: DeploymentFactory, digits_files: DigitsFiles, mlflow_server: MlflowServer
) -> None:
    assert mlflow_server.register_onnx(digits_files.model, "digits") == 1
    deployment = deploy(mlflow_tracking_uri=mlflow_server.url)
    deployment.start_worker()
    spec = deployment.upload_digits(digits_files)
    del spec["model_id"]
    spec.update(model_uri="models:/digits/1", registry={})

    job = deployment.wait_final(deployment.submit(spec))

    assert job["state"] == "succeeded", (job["error"], deployment.worker_logs())
    # the MLflow model is stored as one of the tenant's models, byte for byte
    model = deployment.get(f"/v1/models/{job['spec']['model_id']}")
    assert model["sha256"] == hashlib.sha256(digits_files.model.read_bytes()).hexdigest()
    assert model["filename"] == "digits-v1.onnx"
    registered = job["result"]["registered"]
    assert (registered["name"], registered["version"]) == ("digits", 2)
    assert registered["tracking_uri"] == mlflow_server.url

    held = json.loads(mlflow_server.python(READ_BACK, "digits", "2").strip().splitlines()[-1])
    compressed = download(deployment, job["id"], "model.onnx").content
    assert held["model_sha256"] == hashlib.sha256(compressed).hexdigest()
    # (MLflow's download adds a registered_model_meta file of its own)
    assert {"MLmodel", "model.onnx"} <= set(held["model_files"])
    assert "loader_module: mlflow.onnx" in held["mlmodel"]
    for tags in (held["version_tags"], held["run_tags"]):
        assert tags["squeeze.job_id"] == job["id"]
        assert tags["squeeze.outcome"] == job["outcome"]
        assert tags["squeeze.method"] == "quantize"
        assert tags["squeeze.source"] == "models:/digits/1"
    final, original = job["result"]["final"], job["result"]["original"]
    metrics = held["metrics"]
    assert metrics[final["metric_name"]] == pytest.approx(final["metric_value"])
    assert metrics[f"original.{final['metric_name']}"] == pytest.approx(original["metric_value"])
    assert metrics["size_bytes"] == final["size_bytes"]
    assert metrics["size_ratio"] == pytest.approx(job["result"]["verdict"]["size_ratio"])
    assert metrics["targets_met"] == float(job["result"]["verdict"]["targets_met"])
    assert any(key.startswith("manifest.") for key in held["params"])
    assert json.loads(held["params"]["steps"])[0]["method"] == "quantize"
    assert held["status"] == "FINISHED"
    assert {"report.json", "manifest.json", "model"} <= set(held["run_files"])
    events = deployment.get(f"{job['links']['events']}?limit=1000")
    kinds = [event["kind"] for event in events["items"]]
    assert kinds.count("registry") == 2  # fetched, then registered
