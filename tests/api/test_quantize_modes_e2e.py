"""Every quantize mode through the REST API: submit over HTTP, run the job, read it back.

The job runs in-process through the worker's JobRunner (the tests in tests/integration do
the same with real worker processes); what is checked here is that each mode a user can
name in a spec produces a downloadable model that runs and a result that says what was
done.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import pytest

from tests.api.conftest import Api
from tests.factories import digits_npz
from worker.runner import JobRunner

# mode config -> op types the downloaded model must contain
MODES: dict[str, tuple[dict[str, Any], set[str]]] = {
    "dynamic": ({"mode": "dynamic"}, {"MatMulInteger"}),
    "static-qdq": ({"mode": "static", "format": "qdq"}, {"QuantizeLinear", "DequantizeLinear"}),
    "static-qoperator": ({"mode": "static", "format": "qoperator"}, {"QLinearConv"}),
    "static-entropy": (
        {"mode": "static", "calibration_method": "entropy", "calibration_samples": 64},
        {"QuantizeLinear"},
    ),
    "static-percentile": (
        {"mode": "static", "calibration_method": "percentile", "calibration_samples": 64},
        {"QuantizeLinear"},
    ),
    "fp16": ({"mode": "fp16"}, {"Cast"}),
    "int4": ({"mode": "int4", "block_size": 32}, {"MatMulNBits"}),
    "qat": ({"mode": "qat", "epochs": 1, "batch_size": 64}, {"QuantizeLinear"}),
    "auto": ({"mode": "auto"}, set()),
}


def digits_job_spec(
    api: Api, model_file: Path, tmp_path: Path, steps: list[dict[str, Any]]
) -> dict[str, Any]:
    """A job on the uploaded digits model: 128 eval rows, 256 training rows, batch 8."""
    evaluation = digits_npz(tmp_path / "eval.npz", split="test", n=128)
    train = digits_npz(tmp_path / "train.npz", split="train", n=256)
    return {
        "model_id": api.model_id(model_file),
        "eval_dataset_id": api.dataset_id(evaluation),
        "train_dataset_id": api.dataset_id(train),
        "steps": steps,
        "batch_size": 8,
    }


def run_job_through_api(api: Api, spec: dict[str, Any]) -> dict[str, Any]:
    response = api.submit(spec)
    assert response.status_code == 202, response.text
    services = api.client.app.state.services  # type: ignore[attr-defined]
    job_id = response.json()["id"]
    JobRunner(services.settings, services.sessions, services.blobs).run(job_id)
    job: dict[str, Any] = api.client.get(response.headers["location"]).json()
    return job


@pytest.mark.parametrize("name", sorted(MODES))
def test_each_quantize_mode_runs_through_the_api(
    name: str, api: Api, model_file: Path, tmp_path: Path
) -> None:
    config, expected_ops = MODES[name]
    spec = digits_job_spec(api, model_file, tmp_path, [{"method": "quantize", **config}])
    spec["calibration_dataset_id"] = spec["train_dataset_id"]
    job = run_job_through_api(api, spec)
    assert job["state"] == "succeeded", job["error"]
    [step] = job["result"]["steps"]
    assert step["details"]["mode"] == config["mode"]

    download = api.client.get(f"/v1/jobs/{job['id']}/artifacts/model.onnx")
    assert download.status_code == 200
    model = onnx.load_from_string(download.content)
    op_types = {node.op_type for node in model.graph.node}
    assert expected_ops <= op_types, f"{name}: {sorted(op_types)}"
    ort.InferenceSession(download.content, providers=["CPUExecutionProvider"])
    assert job["result"]["final"]["size_bytes"] == len(download.content)
    assert len(download.content) < model_file.stat().st_size


PRUNES: dict[str, list[dict[str, Any]]] = {
    "unstructured": [{"method": "prune", "sparsity": 0.8, "fine_tune": {"epochs": 1}}],
    "structured": [
        {"method": "prune", "kind": "structured", "sparsity": 0.5, "fine_tune": {"epochs": 1}}
    ],
    "n_m": [{"method": "prune", "kind": "n_m", "fine_tune": {"epochs": 0}}],
    "prune-then-quantize": [
        {"method": "prune", "kind": "structured", "sparsity": 0.5, "fine_tune": {"epochs": 1}},
        {"method": "quantize", "mode": "static"},
    ],
}


@pytest.mark.parametrize("name", sorted(PRUNES))
def test_each_prune_kind_runs_through_the_api(
    name: str, api: Api, model_file: Path, tmp_path: Path
) -> None:
    spec = digits_job_spec(api, model_file, tmp_path, PRUNES[name])
    job = run_job_through_api(api, spec)
    assert job["state"] == "succeeded", job["error"]
    assert [step["method"] for step in job["result"]["steps"]] == [
        step["method"] for step in PRUNES[name]
    ]
    prune_details = job["result"]["steps"][0]["details"]
    assert prune_details["kind"] == PRUNES[name][0].get("kind", "unstructured")
    download = api.client.get(f"/v1/jobs/{job['id']}/artifacts/model.onnx")
    assert download.status_code == 200
    ort.InferenceSession(download.content, providers=["CPUExecutionProvider"])
    final, original = job["result"]["final"], job["result"]["original"]
    if name in ("structured", "prune-then-quantize"):
        assert final["parameters"] < original["parameters"] * 0.6  # channels really removed
    if name == "prune-then-quantize":
        assert len(download.content) < model_file.stat().st_size / 4


def test_a_prune_job_reports_the_metric_before_and_after_pruning_and_fine_tuning(
    api: Api, model_file: Path, tmp_path: Path
) -> None:
    steps = [{"method": "prune", "sparsity": 0.9, "scope": "local", "fine_tune": {"epochs": 2}}]
    spec = digits_job_spec(api, model_file, tmp_path, steps)
    job = run_job_through_api(api, spec)
    assert job["state"] == "succeeded", job["error"]
    details = job["result"]["steps"][0]["details"]
    # the step measures on the selection rows (the job's split); the job on the held-out
    original = job["result"]["original"]
    assert details["metric_original"] == pytest.approx(original["selection_metric_value"])
    # 90% of the weights gone costs accuracy; fine-tuning wins some of it back
    assert details["metric_after_pruning"] < details["metric_original"]
    assert details["metric_after_fine_tuning"] > details["metric_after_pruning"]
    assert details["metric_after_fine_tuning"] == pytest.approx(
        job["result"]["steps"][0]["metrics"]["selection_metric_value"], abs=0.02
    )
