"""Upload -> job -> poll -> download against real Celery worker processes, on both profiles."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from core.evaluation import split_eval_rows
from service.examples import digits_arrays
from tests.conftest import DigitsFiles
from tests.integration.conftest import DeploymentFactory, download
from tests.services import wait_for

pytestmark = pytest.mark.slow


def test_full_flow_produces_a_smaller_model_that_runs(
    deploy: DeploymentFactory, digits_files: DigitsFiles, tmp_path_factory: pytest.TempPathFactory
) -> None:
    deployment = deploy()
    deployment.start_worker()
    job_url = deployment.submit(deployment.upload_digits(digits_files))
    job = deployment.wait_final(job_url)
    assert job["state"] == "succeeded", job["error"]
    assert job["progress"] == 1.0

    listed = deployment.get(f"{job_url}/artifacts")
    names = sorted(item["name"] for item in listed["items"])
    assert names == ["manifest.json", "model.onnx", "report.html", "report.json"]

    model_bytes = download(deployment, job["id"], "model.onnx").content
    assert len(model_bytes) < digits_files.model.stat().st_size / 2
    model = onnx.load_from_string(model_bytes)
    assert any(node.op_type == "QuantizeLinear" for node in model.graph.node)
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    images, labels = digits_arrays("test")
    correct = session.run(None, {"input": images})[0].argmax(1) == labels
    assert float(correct.mean()) > 0.9
    # The stored metric is the one measured on the worker, on the job's held-out eval rows.
    spec = job["spec"]
    held_out = split_eval_rows(len(labels), spec["seed"], spec["held_out_fraction"]).held_out
    final = job["result"]["final"]
    assert final["metric_rows"] == len(held_out) == job["result"]["evaluation"]["held_out_rows"]
    assert final["metric_value"] == pytest.approx(float(correct[held_out].mean()), abs=1e-6)

    report = download(deployment, job["id"], "report.json").json()
    assert report["final"]["size_bytes"] == len(model_bytes)
    manifest = download(deployment, job["id"], "manifest.json").json()
    assert manifest == job["result"]["manifest"]

    events = deployment.get(f"{job_url}/events")["items"]
    assert [e["kind"] for e in events][-1] == "succeeded"
    assert np.diff([e["data"]["progress"] for e in events if e["kind"] == "progress"]).min() >= 0


def test_a_job_survives_its_worker_being_killed(
    deploy: DeploymentFactory, digits_files: DigitsFiles
) -> None:
    # Many timing runs keep the job busy long enough to kill the worker in the middle.
    deployment = deploy(measure_runs=600, lease_s=3.0, heartbeat_s=0.5)
    first = deployment.start_worker()
    spec = deployment.upload_digits(digits_files)
    job_url = deployment.submit({**spec, "batch_size": 256})
    assert wait_for(lambda: deployment.get(job_url)["progress"] > 0, timeout_s=120), (
        deployment.worker_logs()
    )
    assert deployment.get(job_url)["state"] == "running"
    first.kill()

    deployment.start_worker()
    job = deployment.wait_final(job_url, timeout_s=240)
    assert job["state"] == "succeeded", job["error"]
    assert job["attempt"] == 2
    names = [item["name"] for item in deployment.get(f"{job_url}/artifacts")["items"]]
    assert sorted(names) == ["manifest.json", "model.onnx", "report.html", "report.json"]
    kinds = [event["kind"] for event in deployment.get(f"{job_url}/events?limit=1000")["items"]]
    assert kinds.count("requeued") == 1 and kinds.count("succeeded") == 1
