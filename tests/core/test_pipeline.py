"""pipeline.run end to end: measured steps, a verdict computed from measurements, progress
reported in order, and cancellation honoured."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from core.context import MeasureSettings, RunContext
from core.errors import (
    EngineError,
    IncompatibleData,
    InvalidDataset,
    JobCancelled,
    UnsupportedModel,
)
from core.measure import latency_at
from core.pipeline import resolve_device, run
from core.spec import JobSpec
from tests.factories import digits_arrays, export_onnx

Event = tuple[float, str, dict[str, Any]]


def job(**overrides: Any) -> JobSpec:
    spec: dict[str, Any] = {
        "model_id": "m1",
        "eval_dataset_id": "eval",
        "calibration_dataset_id": "calib",
        "steps": [{"method": "quantize", "mode": "static"}],
        "batch_size": 8,
    } | overrides
    return JobSpec.model_validate(spec)


def context(
    tmp_path: Path, settings: MeasureSettings, events: list[Event], **kw: Any
) -> RunContext:
    return RunContext(
        work_dir=tmp_path / "work",
        measure=settings,
        on_progress=lambda p, m, d: events.append((p, m, d)),
        **kw,
    )


@pytest.fixture()
def datasets(digits_test_npz: Path, digits_train_npz: Path) -> dict[str, Path]:
    return {"eval": digits_test_npz, "calib": digits_train_npz}


def test_static_job_reports_measured_metrics_and_an_honest_verdict(
    cnn_onnx: Path,
    datasets: dict[str, Path],
    tmp_path: Path,
    fast_measure: MeasureSettings,
) -> None:
    events: list[Event] = []
    targets = {"max_size_bytes": 1000, "max_metric_drop": 0.05, "max_latency_ms": 10_000}
    spec = job(targets=targets)

    result, final_path = run(cnn_onnx, datasets, spec, context(tmp_path, fast_measure, events))

    # the final model is a file inside the work dir, and the result describes that file
    assert final_path.parent == tmp_path / "work"
    assert result.final.size_bytes == final_path.stat().st_size
    assert result.original.size_bytes == cnn_onnx.stat().st_size
    assert result.original.metric_name == result.final.metric_name == "accuracy"
    assert result.steps[0].metrics.metric_change == pytest.approx(
        result.steps[0].metrics.metric_value - result.original.metric_value
    )

    checks = {(check.target, check.batch_size): check for check in result.verdict.checks}
    # latency targets hold at every deployment batch size: 1 and the job's 8
    assert set(checks) == {
        ("max_size_bytes", None),
        ("max_metric_drop", None),
        ("max_latency_ms", 1),
        ("max_latency_ms", 8),
        ("not_slower", 1),
        ("not_slower", 8),
    }
    size = checks["max_size_bytes", None]
    assert (size.measured, size.met) == (final_path.stat().st_size, False)  # impossible target
    drop = checks["max_metric_drop", None]
    assert drop.measured == pytest.approx(result.original.metric_value - result.final.metric_value)
    assert drop.met is (drop.measured <= 0.05)
    latency = checks["max_latency_ms", 8]
    assert latency.measured == latency_at(result.final, 8).median_ms
    assert latency.met
    assert result.verdict.targets_met is False
    assert result.verdict.outcome == "targets_missed"
    assert "max_size_bytes" in result.verdict.outcome_reason
    assert result.verdict.size_ratio == pytest.approx(
        result.final.size_bytes / result.original.size_bytes
    )
    assert result.verdict.size_ratio < 1 / 3
    speed = {entry.batch_size: entry for entry in result.verdict.speed}
    assert set(speed) == {1, 8}
    assert result.verdict.latency_ratio == speed[8].ratio
    assert checks["not_slower", 8].measured == speed[8].ratio

    progress = [p for p, _, _ in events]
    assert progress == sorted(progress)
    assert (progress[0], progress[-1]) == (0.0, 1.0)
    step_events = [data for _, _, data in events if data.get("method") == "quantize"]
    assert {data["step"] for data in step_events} == {0}
    assert any("metrics" in data for data in step_events)

    expected_sha = hashlib.sha256(cnn_onnx.read_bytes()).hexdigest()
    assert result.manifest["inputs"]["model"]["sha256"] == expected_sha
    assert set(result.manifest["inputs"]) == {"model", "eval", "calib"}
    assert result.manifest["seed"] == spec.seed
    assert result.manifest["libraries"]["onnxruntime"] == ort.__version__


def test_a_reachable_target_set_is_met(
    cnn_onnx: Path, datasets: dict[str, Path], tmp_path: Path, fast_measure: MeasureSettings
) -> None:
    spec = job(
        steps=[{"method": "quantize", "mode": "fp16"}],
        # FP16 on a CPU buys size, not speed: the user allows a slower model
        targets={"max_size_bytes": cnn_onnx.stat().st_size // 2 + 10_000, "allow_slower": True},
        batch_size=1,
    )
    result, _ = run(cnn_onnx, datasets, spec, context(tmp_path, fast_measure, []))
    assert result.verdict.targets_met is True
    assert [c.target for c in result.verdict.checks] == ["default_metric_guard", "max_size_bytes"]


def test_steps_run_in_order_each_on_the_previous_output(
    mlp_onnx: Path, flat_npz: Path, tmp_path: Path, fast_measure: MeasureSettings
) -> None:
    events: list[Event] = []
    spec = job(
        eval_dataset_id="flat",
        calibration_dataset_id=None,
        task={"kind": "embedding"},
        steps=[{"method": "quantize", "mode": "dynamic"}, {"method": "quantize", "mode": "fp16"}],
    )
    # the second step receives the first one's INT8 output, and refuses it clearly
    with pytest.raises(UnsupportedModel, match="already quantized") as raised:
        run(mlp_onnx, {"flat": flat_npz}, spec, context(tmp_path, fast_measure, events))
    assert raised.value.code == "already_quantized"

    done = [data for _, message, data in events if message.endswith("done")]
    assert [data["step"] for data in done] == [0]
    assert done[0]["metrics"]["metric_name"] == "cosine_similarity"
    assert done[0]["metrics"]["metric_value"] > 0.95  # measured against the original
    started = [data["step"] for _, message, data in events if message.endswith("running")]
    assert started == [0, 1]


def test_an_embedding_job_scores_cosine_similarity(
    mlp_onnx: Path, flat_npz: Path, tmp_path: Path, fast_measure: MeasureSettings
) -> None:
    spec = job(
        eval_dataset_id="flat",
        calibration_dataset_id=None,
        task={"kind": "embedding"},
        steps=[{"method": "quantize", "mode": "static"}],
        targets={"max_metric_drop": 0.05},
    )
    result, _ = run(mlp_onnx, {"flat": flat_npz}, spec, context(tmp_path, fast_measure, []))

    assert result.original.metric_name == "cosine_similarity"
    assert result.original.metric_value == pytest.approx(1.0)
    assert 0.9 < result.final.metric_value < 1.0
    [drop] = [c for c in result.verdict.checks if c.target == "max_metric_drop"]
    assert drop.measured == pytest.approx(1.0 - result.final.metric_value, abs=1e-6)


def test_cancellation_stops_the_job(
    cnn_onnx: Path, datasets: dict[str, Path], tmp_path: Path, fast_measure: MeasureSettings
) -> None:
    events: list[Event] = []

    def cancelled_once_measuring_starts() -> bool:
        return any("measuring" in message for _, message, _ in events)

    ctx = context(tmp_path, fast_measure, events, is_cancelled=cancelled_once_measuring_starts)
    with pytest.raises(JobCancelled):
        run(cnn_onnx, datasets, job(), ctx)
    assert not (tmp_path / "work" / "model.onnx").exists()
    assert not any("step" in data for _, _, data in events)


def test_a_missing_dataset_is_an_input_error(
    cnn_onnx: Path, digits_test_npz: Path, tmp_path: Path, fast_measure: MeasureSettings
) -> None:
    with pytest.raises(InvalidDataset) as raised:
        run(cnn_onnx, {"eval": digits_test_npz}, job(), context(tmp_path, fast_measure, []))
    assert raised.value.code == "dataset_missing"


def test_a_pinned_batch_other_than_the_spec_s_is_refused_up_front(
    digits_cnn: torch.nn.Module,
    datasets: dict[str, Path],
    tmp_path: Path,
    fast_measure: MeasureSettings,
) -> None:
    images, _ = digits_arrays("test")
    pinned = export_onnx(digits_cnn, images[:1], tmp_path / "b1.onnx", dynamic_batch=False)
    with pytest.raises(IncompatibleData, match="pins its batch dimension to 1"):
        run(pinned, datasets, job(batch_size=8), context(tmp_path, fast_measure, []))


def test_auto_device_follows_onnx_runtime() -> None:
    expected = "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
    assert resolve_device("auto") == expected
    assert resolve_device("cpu") == "cpu"


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available here"
)
def test_asking_for_an_absent_gpu_is_a_clear_error() -> None:
    with pytest.raises(EngineError) as raised:
        resolve_device("cuda")
    assert raised.value.code == "device_unavailable"


def test_steps_choose_on_selection_rows_and_the_verdict_judges_held_out_rows(
    cnn_onnx: Path, datasets: dict[str, Path], tmp_path: Path, fast_measure: MeasureSettings
) -> None:
    spec = job(steps=[{"method": "quantize", "mode": "auto"}], targets={"max_metric_drop": 0.02})
    result, _ = run(cnn_onnx, datasets, spec, context(tmp_path, fast_measure, []))

    evaluation = result.evaluation
    assert evaluation is not None and evaluation.split
    assert evaluation.selection_rows + evaluation.held_out_rows == evaluation.rows
    # auto chose on the selection rows only
    assert result.steps[0].details["metric_rows"] == {"selection": evaluation.selection_rows}
    # every reported metric is the held-out rows'
    for model in (result.original, result.steps[0].metrics, result.final):
        assert model.metric_rows == evaluation.held_out_rows
    assert result.verdict.metric_rows == evaluation.held_out_rows
    # the step's own metric check on the held-out rows is the verdict's
    [step_check] = result.steps[0].metric_checks
    [job_check] = [c for c in result.verdict.checks if c.target == "max_metric_drop"]
    assert (step_check.measured, step_check.met) == (job_check.measured, job_check.met)


def test_a_step_that_quantizes_nothing_makes_the_job_unchanged(
    cnn_onnx: Path, datasets: dict[str, Path], tmp_path: Path, fast_measure: MeasureSettings
) -> None:
    # allow_slower: shape folding rewrote the graph, and timing noise must not decide this
    spec = job(
        steps=[{"method": "quantize", "mode": "dynamic", "op_types": ["LSTM"]}],
        targets={"allow_slower": True},
    )
    result, _ = run(cnn_onnx, datasets, spec, context(tmp_path, fast_measure, []))
    assert result.steps[0].unchanged_reason is not None
    assert "no node was quantized" in result.steps[0].unchanged_reason
    assert result.verdict.outcome == "unchanged"
    assert "no node was quantized" in result.verdict.outcome_reason


def test_training_data_with_the_eval_bytes_is_refused(
    cnn_onnx: Path, digits_test_npz: Path, tmp_path: Path, fast_measure: MeasureSettings
) -> None:
    copy = tmp_path / "copy.npz"
    copy.write_bytes(digits_test_npz.read_bytes())
    spec = job(
        train_dataset_id="train",
        calibration_dataset_id=None,
        steps=[{"method": "prune", "sparsity": 0.5}],
    )
    with pytest.raises(IncompatibleData) as raised:
        run(
            cnn_onnx,
            {"eval": digits_test_npz, "train": copy},
            spec,
            context(tmp_path, fast_measure, []),
        )
    assert raised.value.code == "data_leakage"


def test_eval_data_without_labels_says_the_metric_is_agreement(
    cnn_onnx: Path, tmp_path: Path, fast_measure: MeasureSettings
) -> None:
    images, _ = digits_arrays("test")
    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, input=images)
    events: list[Event] = []
    spec = job(calibration_dataset_id=None, steps=[{"method": "quantize", "mode": "static"}])
    result, _ = run(cnn_onnx, {"eval": unlabelled}, spec, context(tmp_path, fast_measure, events))
    assert result.original.metric_name == "agreement"
    codes = {note.code: note.message for note in result.notes}
    assert "agreement with the original" in codes["metric_without_labels"]
    assert "--labels" in codes["metric_without_labels"]
    # calibration fell back to the eval rows (the selection part): the record says so
    assert "eval_doubles_as_calibration" in codes
    validated = [d for _, m, d in events if m == "validated the model and data"]
    assert {n["code"] for n in validated[0]["notes"]} == set(codes)


def test_a_small_eval_set_is_not_split_and_the_record_says_so(
    cnn_onnx: Path, tmp_path: Path, fast_measure: MeasureSettings
) -> None:
    images, labels = digits_arrays("test")
    small = tmp_path / "small.npz"
    np.savez(small, input=images[:40], label=labels[:40])
    spec = job(calibration_dataset_id=None)
    result, _ = run(cnn_onnx, {"eval": small}, spec, context(tmp_path, fast_measure, []))
    assert result.evaluation is not None and not result.evaluation.split
    assert "eval_rows_not_split" in {note.code for note in result.notes}
    assert result.final.metric_rows == 40
