"""Deployment targets through the pipeline: one job, an ONNX Runtime and an OpenVINO target,
each with its own model and verdict on the held-out rows, the OpenVINO IR published
beside the ONNX model, and the speed against the ONNX Runtime original reported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import core.deployment
import core.registry
from core.context import MeasureSettings, RunContext
from core.pipeline import run
from core.registry import StepData, StepOutput, get_step
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


def test_a_model_the_steps_left_unchanged_is_not_timed_against_itself(
    cnn_onnx: Path, datasets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the steps keep the input; and the timer, were it asked, would call every model
    # measured after the baseline 1.5x slower (noise on a busy machine can)
    def keep_the_input(model: Path, config: Any, data: StepData, ctx: RunContext) -> StepOutput:
        return StepOutput(model, unchanged_reason="kept for the test")

    def slower_after_the_baseline(
        calls: list[Any], warmup: int, runs: int, block: int = 1
    ) -> list[list[float]]:
        base = [10.0] * max(runs, 1)
        return [base, base, *([15.0] * max(runs, 1) for _ in calls[2:])]

    get_step("quantize")  # registers the real steps before one is replaced
    monkeypatch.setitem(core.registry._STEPS, "quantize", keep_the_input)
    monkeypatch.setattr(core.deployment, "time_interleaved", slower_after_the_baseline)
    spec = job(deployment=[{"runtime": "onnxruntime", "threads": [1], "runtime_defaults": False}])
    result, _ = run(cnn_onnx, datasets, spec, RunContext(work_dir=tmp_path / "w", measure=FAST))

    [ort] = result.targets
    assert [s.ratio for s in ort.verdict.speed] == [1.0, 1.0]
    assert [s.ratio for s in ort.vs_onnxruntime] == [1.0, 1.0]
    assert ort.verdict.outcome == "unchanged"
    assert [s.ratio for s in result.verdict.speed] == [1.0, 1.0]  # the job's own verdict too
    assert result.verdict.outcome == "unchanged"
