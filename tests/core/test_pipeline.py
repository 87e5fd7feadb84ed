"""pipeline.run end to end: measured steps, a verdict computed from measurements, progress
reported in order, and cancellation honoured."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

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
from core.pipeline import compute_verdict, resolve_device, run
from core.results import Latency, ModelMetrics
from core.spec import JobSpec, Targets
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

    checks = {check.target: check for check in result.verdict.checks}
    assert set(checks) == set(targets) | {"not_slower"}
    size = checks["max_size_bytes"]
    assert (size.measured, size.met) == (final_path.stat().st_size, False)  # impossible target
    drop = checks["max_metric_drop"]
    assert drop.measured == pytest.approx(result.original.metric_value - result.final.metric_value)
    assert drop.met is (drop.measured <= 0.05)
    latency = checks["max_latency_ms"]
    assert latency.measured == latency_at(result.final, 8).median_ms
    assert latency.met
    assert result.verdict.targets_met is False
    assert result.verdict.size_ratio == pytest.approx(
        result.final.size_bytes / result.original.size_bytes
    )
    assert result.verdict.size_ratio < 1 / 3
    assert result.verdict.latency_ratio == pytest.approx(
        latency_at(result.final, 8).median_ms / latency_at(result.original, 8).median_ms
    )

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
    assert [c.target for c in result.verdict.checks] == ["max_size_bytes"]


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


def test_verdict_relative_metric_drop_is_a_fraction_of_the_original() -> None:
    original = metrics(size_bytes=1000, metric_value=0.80, latency_ms=2.0)
    final = metrics(size_bytes=250, metric_value=0.76, latency_ms=1.0)
    verdict = compute_verdict(
        original,
        final,
        Targets(max_metric_drop=0.04, metric_drop_mode="relative", max_latency_ms=0.5),
        batch_size=4,
    )
    drop, latency, not_slower = verdict.checks
    assert drop.measured == pytest.approx(0.05)  # 0.04 points of 0.80
    assert drop.met is False
    assert (latency.measured, latency.met) == (1.0, False)
    assert (not_slower.target, not_slower.measured, not_slower.met) == ("not_slower", 0.5, True)
    assert verdict.size_ratio == 0.25
    assert verdict.latency_ratio == 0.5
    assert verdict.metric_change == pytest.approx(-0.04)
    assert verdict.targets_met is False


def test_verdict_with_no_targets_only_requires_not_slower() -> None:
    same = metrics(size_bytes=10, metric_value=0.5, latency_ms=1.0)
    verdict = compute_verdict(same, same, Targets(), batch_size=4)
    assert verdict.targets_met is True
    assert [(c.target, c.measured, c.met) for c in verdict.checks] == [("not_slower", 1.0, True)]


def test_a_slower_model_misses_the_verdict_unless_the_user_allows_it() -> None:
    original = metrics(size_bytes=1000, metric_value=0.8, latency_ms=1.0)
    slower = metrics(size_bytes=500, metric_value=0.8, latency_ms=1.3)
    verdict = compute_verdict(original, slower, Targets(), batch_size=4)
    assert verdict.targets_met is False
    assert [(c.target, c.met) for c in verdict.checks] == [("not_slower", False)]
    allowed = compute_verdict(original, slower, Targets(allow_slower=True), batch_size=4)
    assert allowed.targets_met is True and allowed.checks == []


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


def metrics(size_bytes: int, metric_value: float, latency_ms: float) -> ModelMetrics:
    return ModelMetrics(
        size_bytes=size_bytes,
        parameters=1,
        latency=[Latency(batch_size=4, median_ms=latency_ms, p95_ms=latency_ms, runs=1)],
        metric_name="accuracy",
        metric_value=metric_value,
    )
