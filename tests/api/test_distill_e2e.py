"""Distillation through the REST API: each student source, prune -> distill -> quantize in
one job, and the specs that are refused (at submission, or as a failed job that says why).

Jobs run in-process through the worker's JobRunner, as in test_quantize_modes_e2e.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import pytest

from tests.api.conftest import Api, ApiFactory, assert_problem
from tests.api.test_quantize_modes_e2e import digits_job_spec, run_job_through_api
from tests.factories import digits_arrays, digits_npz, student_cnn_onnx

IMAGES = digits_arrays("test")[0][:16]


@pytest.fixture
def fast_api(make_api: ApiFactory) -> Api:
    """Few timing runs: these tests check what a job does, not how fast the machine is."""
    return make_api(measure_runs=5, measure_warmup_runs=1)


def downloaded_model_runs(api: Api, job: dict[str, Any]) -> onnx.ModelProto:
    download = api.client.get(f"/v1/jobs/{job['id']}/artifacts/model.onnx")
    assert download.status_code == 200
    session = ort.InferenceSession(download.content, providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": IMAGES})
    assert logits.shape == (len(IMAGES), 10)
    return onnx.load_from_string(download.content)


def student_for(source: str, api: Api, tmp_path: Path) -> dict[str, Any]:
    if source == "family":
        return {"source": "family", "family": "cnn", "parameter_ratio": 0.1}
    if source == "upload":
        uploaded = api.model_id(student_cnn_onnx(tmp_path / "student.onnx"))
        return {"source": "upload", "model_id": uploaded}
    return {"source": "step_input"}


@pytest.mark.parametrize("source", ["family", "step_input", "upload"])
def test_each_student_source_distills_through_the_api(
    source: str, fast_api: Api, model_file: Path, tmp_path: Path
) -> None:
    step = {
        "method": "distill",
        "epochs": 2,
        "student": student_for(source, fast_api, tmp_path),
        "compare_label_only": source == "family",
    }
    job = run_job_through_api(fast_api, digits_job_spec(fast_api, model_file, tmp_path, [step]))

    assert job["state"] == "succeeded", job["error"]
    [result] = job["result"]["steps"]
    details = result["details"]
    assert details["student"]["source"] == source
    # the step chose its epoch on the selection rows; the job reports the held-out rows
    original = job["result"]["original"]
    assert details["eval_metric"]["teacher"] == pytest.approx(original["selection_metric_value"])
    assert details["eval_metric"]["distilled"] == pytest.approx(
        result["metrics"]["selection_metric_value"]
    )
    assert result["metrics"]["metric_rows"] == job["result"]["evaluation"]["held_out_rows"]
    downloaded_model_runs(fast_api, job)
    if source == "family":
        assert details["eval_metric"]["label_only"] is not None
        assert job["result"]["final"]["parameters"] <= 0.1 * job["result"]["original"]["parameters"]
    events = fast_api.client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 100}).json()
    epochs = [e["data"] for e in events["items"] if (e.get("data") or {}).get("phase")]
    assert [(e["phase"], e["epoch"]) for e in epochs][:2] == [("distill", 1), ("distill", 2)]
    assert all("loss" in e and "eval_metric" in e for e in epochs)


def test_prune_distill_quantize_runs_in_one_job(
    fast_api: Api, model_file: Path, tmp_path: Path
) -> None:
    steps = [
        {"method": "prune", "kind": "structured", "sparsity": 0.5, "fine_tune": {"epochs": 1}},
        {"method": "distill", "epochs": 1, "student": {"source": "step_input"}},
        {"method": "quantize", "mode": "dynamic"},
    ]
    job = run_job_through_api(fast_api, digits_job_spec(fast_api, model_file, tmp_path, steps))

    assert job["state"] == "succeeded", job["error"]
    assert [s["method"] for s in job["result"]["steps"]] == ["prune", "distill", "quantize"]
    distill = job["result"]["steps"][1]["details"]
    pruned_parameters = job["result"]["steps"][0]["metrics"]["parameters"]
    assert distill["parameters"]["student"] == pruned_parameters  # trained on, not replaced
    assert distill["parameters"]["teacher"] == job["result"]["original"]["parameters"]
    model = downloaded_model_runs(fast_api, job)
    assert "MatMulInteger" in {node.op_type for node in model.graph.node}


def test_an_unknown_student_model_is_refused_like_an_unknown_model(
    api: Api, model_file: Path, tmp_path: Path
) -> None:
    step = {"method": "distill", "student": {"source": "upload", "model_id": "mdl_nope"}}
    spec = digits_job_spec(api, model_file, tmp_path, [step])

    unknown_student = api.submit(spec)
    unknown_teacher = api.submit({**spec, "model_id": "mdl_nope", "steps": [{"method": "distill"}]})

    body = assert_problem(unknown_student, unknown_teacher.status_code, "unknown_model")
    assert "mdl_nope" in body["detail"]
    assert unknown_teacher.json()["code"] == "unknown_model"


def test_feature_matching_with_a_family_student_is_refused(
    api: Api, model_file: Path, tmp_path: Path
) -> None:
    step = {"method": "distill", "feature_matching": 1.0, "student": {"family": "cnn"}}
    response = api.submit(digits_job_spec(api, model_file, tmp_path, [step]))

    body = assert_problem(response, 422, "invalid_request")
    assert "feature_matching needs a student derived from the teacher" in response.text
    assert body["errors"]


def test_a_label_only_comparison_without_labels_fails_the_job_saying_why(
    fast_api: Api, model_file: Path, tmp_path: Path
) -> None:
    # Labels are optional at submission (distillation needs none), so the engine finds
    # their absence; it checks before training anything.
    step = {"method": "distill", "compare_label_only": True}
    spec = digits_job_spec(fast_api, model_file, tmp_path, [step])
    unlabelled = digits_npz(tmp_path / "unlabelled.npz", split="train", n=64, labels=False)
    spec["train_dataset_id"] = fast_api.dataset_id(unlabelled)

    job = run_job_through_api(fast_api, spec)

    assert job["state"] == "failed"
    assert job["error"]["code"] == "incompatible_data"
    assert "compare_label_only" in job["error"]["message"]
