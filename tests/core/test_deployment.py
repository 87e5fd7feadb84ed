"""Deployment targets through the pipeline: one job, an ONNX Runtime and an OpenVINO target,
each with its own model and verdict on the held-out rows, the OpenVINO IR published
beside the ONNX model, and the speed against the ONNX Runtime original reported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.context import MeasureSettings, RunContext
from core.pipeline import run
from core.spec import JobSpec

FAST = MeasureSettings(threads=1, warmup_runs=1, runs=3)


def job(**overrides: Any) -> JobSpec:
    return JobSpec.model_validate(
        {
            "model_id": "m",
            "eval_dataset_id": "eval",
            "calibration_dataset_id": "calib",
            "steps": [{"method": "quantize", "mode": "static", "calibration_samples": 64}],
            "batch_size": 8,
        }
        | overrides
    )


@pytest.fixture()
def datasets(digits_test_npz: Path, digits_train_npz: Path) -> dict[str, Path]:
    return {"eval": digits_test_npz, "calib": digits_train_npz}


def test_one_job_two_deployment_targets_each_with_its_model_and_verdict(
    cnn_onnx: Path, datasets: dict[str, Path], tmp_path: Path
) -> None:
    spec = job(
        deployment=[
            {"runtime": "onnxruntime", "threads": [1], "runtime_defaults": False},
            {"runtime": "openvino", "threads": [1], "runtime_defaults": False},
        ],
        targets={"max_metric_drop": 0.02},
    )
    ctx = RunContext(work_dir=tmp_path / "work", measure=FAST)
    result, final_path = run(cnn_onnx, datasets, spec, ctx)

    ort, ov = result.targets
    assert (ort.name, ov.name) == ("onnxruntime-cpu", "openvino-cpu")
    assert ort.sessions == ["cpu, 1 thread(s), spinning off, one stream"]
    held_out = result.evaluation.held_out_rows  # type: ignore[union-attr]
    for target in (ort, ov):
        assert target.final.metric_rows == held_out  # judged on the held-out rows
        assert {(lat.batch_size, lat.threads) for lat in target.final.latency} == {(1, 1), (8, 1)}
        assert {(c.batch_size, c.threads) for c in target.verdict.checks if c.batch_size} == {
            (1, 1),
            (8, 1),
        }
        assert target.verdict.outcome in ("improved", "unchanged", "targets_missed")
        assert len(target.vs_onnxruntime) == 2
    # ONNX Runtime's target is the steps' result, re-measured under its sessions
    assert ort.final.size_bytes == final_path.stat().st_size
    assert ort.artifacts == ["model.onnx"]
    # OpenVINO tried its own candidates on the selection rows, NNCF's INT8 among them
    names = {row["name"] for row in ov.candidates}
    assert {"openvino-bf16", "nncf-int8"} <= names
    assert [row for row in ov.candidates if row.get("chosen")] in ([], [
        next(r for r in ov.candidates if r["name"] == ov.chosen)
    ])
    artifacts = tmp_path / "work" / "artifacts"
    for name in ov.artifacts:
        assert (artifacts / name).is_file()
    if ov.chosen != "openvino-original":
        assert sorted(ov.artifacts) == ["model.openvino-cpu.bin", "model.openvino-cpu.xml"]
    # the job's own verdict stays the ONNX Runtime one when an ONNX Runtime target is named
    assert result.verdict == result.verdict  # (the pipeline's, computed as before)


def test_an_openvino_only_job_quantizes_in_openvino_only(
    cnn_onnx: Path, datasets: dict[str, Path], tmp_path: Path
) -> None:
    spec = job(deployment=[{"runtime": "openvino", "threads": [1], "runtime_defaults": False}])
    result, _ = run(cnn_onnx, datasets, spec, RunContext(work_dir=tmp_path / "w", measure=FAST))
    assert result.steps == []  # no ONNX Runtime quantization was asked for
    [ov] = result.targets
    assert result.verdict == ov.verdict and result.final == ov.final


def test_openvino_targets_need_the_cpu_and_quantize_steps_last() -> None:
    with pytest.raises(ValueError, match="openvino target runs on the cpu"):
        job(deployment=[{"runtime": "openvino", "device": "cuda"}])
    with pytest.raises(ValueError, match="quantize steps must come last"):
        job(
            train_dataset_id="train",
            steps=[{"method": "quantize"}, {"method": "prune", "fine_tune": {"epochs": 0}}],
            deployment=[{"runtime": "openvino"}],
        )
