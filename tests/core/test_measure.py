"""measure: latency, size, parameters and the task metric, all from running the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from core.context import MeasureSettings
from core.data import load_arrays, model_feeds, take_rows
from core.formats import inspect_model
from core.measure import (
    measure_latency,
    measure_model,
    measure_model_with_outputs,
    providers_for,
    score,
    session_options,
)
from core.spec import TaskSpec
from tests.factories import digits_arrays, export_onnx


def test_measures_the_cnn_against_labels(
    cnn_onnx: Path,
    digits_test_npz: Path,
    digits_cnn: torch.nn.Module,
    torch_test_accuracy: float,
    fast_measure: MeasureSettings,
) -> None:
    metrics = measure_model(
        cnn_onnx, load_arrays(digits_test_npz), TaskSpec(), 8, fast_measure, "cpu"
    )

    assert metrics.metric_name == "accuracy"
    # ONNX Runtime and torch may break a near-tie differently on a sample or two
    assert abs(metrics.metric_value - torch_test_accuracy) <= 2 / 450
    assert metrics.size_bytes == cnn_onnx.stat().st_size
    assert metrics.parameters == sum(p.numel() for p in digits_cnn.parameters())
    assert [lat.batch_size for lat in metrics.latency] == [1, 8]
    for latency in metrics.latency:
        assert latency.runs == fast_measure.runs
        assert 0 < latency.median_ms <= latency.p95_ms


def test_without_labels_the_metric_is_agreement_with_the_reference(
    cnn_onnx: Path, digits_test_npz: Path, fast_measure: MeasureSettings
) -> None:
    arrays = {"input": load_arrays(digits_test_npz)["input"]}
    metrics, outputs = measure_model_with_outputs(
        cnn_onnx, arrays, TaskSpec(), 1, fast_measure, "cpu"
    )
    assert (metrics.metric_name, metrics.metric_value) == ("agreement", 1.0)
    assert outputs.shape == (450, 10)

    # against a reference that predicts class 0 everywhere, agreement is the share of 0s
    always_zero = np.zeros_like(outputs)
    always_zero[:, 0] = 1.0
    metrics = measure_model(
        cnn_onnx, arrays, TaskSpec(), 1, fast_measure, "cpu", reference_outputs=always_zero
    )
    assert metrics.metric_value == pytest.approx(np.mean(outputs.argmax(axis=1) == 0))


def test_embedding_metric_is_cosine_to_the_reference(
    mlp_onnx: Path, flat_npz: Path, mlp: torch.nn.Module, fast_measure: MeasureSettings
) -> None:
    arrays = load_arrays(flat_npz)
    task = TaskSpec(kind="embedding")
    metrics, outputs = measure_model_with_outputs(mlp_onnx, arrays, task, 1, fast_measure, "cpu")
    assert metrics.metric_name == "cosine_similarity"
    assert metrics.metric_value == pytest.approx(1.0)

    with torch.no_grad():
        expected = mlp(torch.from_numpy(arrays["input"])).numpy()
    np.testing.assert_allclose(outputs, expected, rtol=1e-4, atol=1e-5)

    flipped = measure_model(
        mlp_onnx, arrays, task, 1, fast_measure, "cpu", reference_outputs=-outputs
    )
    assert flipped.metric_value == pytest.approx(-1.0)


def test_regression_metric_is_r2_against_labels_with_neg_mse_on_request(
    mlp_onnx: Path, flat_npz: Path, mlp: torch.nn.Module, fast_measure: MeasureSettings
) -> None:
    inputs = load_arrays(flat_npz)["input"]
    targets = np.random.default_rng(0).normal(size=(len(inputs), 32)).astype(np.float32)
    with torch.no_grad():
        predicted = mlp(torch.from_numpy(inputs)).numpy()

    metrics = measure_model(
        mlp_onnx,
        {"input": inputs, "label": targets},
        TaskSpec(kind="regression"),
        1,
        fast_measure,
        "cpu",
    )
    # R^2: the error relative to the targets' own spread, never a zero base
    assert metrics.metric_name == "r2"
    sse = np.sum((predicted.astype(np.float64) - targets) ** 2)
    sst = np.sum((targets.astype(np.float64) - targets.mean()) ** 2)
    assert metrics.metric_value == pytest.approx(1 - sse / sst, rel=1e-4)
    rmse = np.sqrt(np.mean((predicted.astype(np.float64) - targets) ** 2))
    assert metrics.metrics["relative_rmse"] == pytest.approx(rmse / targets.std(), rel=1e-4)

    asked = measure_model(
        mlp_onnx,
        {"input": inputs, "label": targets},
        TaskSpec(kind="regression", metric="neg_mse"),
        1,
        fast_measure,
        "cpu",
    )
    expected = -np.mean((predicted.astype(np.float64) - targets) ** 2)
    assert (asked.metric_name, asked.metric_value) == ("neg_mse", pytest.approx(expected, rel=1e-4))


def test_a_model_with_a_pinned_batch_is_run_one_sample_at_a_time(
    digits_cnn: torch.nn.Module,
    tmp_path: Path,
    torch_test_accuracy: float,
    fast_measure: MeasureSettings,
) -> None:
    images, labels = digits_arrays("test")
    path = export_onnx(digits_cnn, images[:1], tmp_path / "b1.onnx", dynamic_batch=False)
    assert inspect_model(path).inputs[0].shape == [1, 1, 8, 8]

    metrics = measure_model(
        path, {"input": images, "label": labels}, TaskSpec(), 1, fast_measure, "cpu"
    )
    assert abs(metrics.metric_value - torch_test_accuracy) <= 2 / 450
    assert [lat.batch_size for lat in metrics.latency] == [1]


def test_latency_feeds_repeat_rows_when_data_is_smaller_than_the_batch(
    cnn_onnx: Path, fast_measure: MeasureSettings
) -> None:
    images, labels = digits_arrays("test")
    arrays = {"input": images[:3], "label": labels[:3]}
    metrics = measure_model(cnn_onnx, arrays, TaskSpec(), 16, fast_measure, "cpu")
    assert [lat.batch_size for lat in metrics.latency] == [1, 16]

    feeds = take_rows(model_feeds(arrays, inspect_model(cnn_onnx).inputs, TaskSpec()), 16)
    assert feeds["input"].shape == (16, 1, 8, 8)
    np.testing.assert_array_equal(feeds["input"][3], images[0])


def test_larger_batches_take_longer(
    cnn_onnx: Path, digits_test_npz: Path, fast_measure: MeasureSettings
) -> None:
    feeds = model_feeds(load_arrays(digits_test_npz), inspect_model(cnn_onnx).inputs, TaskSpec())
    one = measure_latency(cnn_onnx, take_rows(feeds, 1), 1, fast_measure, "cpu")
    many = measure_latency(cnn_onnx, take_rows(feeds, 256), 256, fast_measure, "cpu")
    assert (one.batch_size, many.batch_size) == (1, 256)
    assert many.median_ms > one.median_ms


def test_score_accuracy_counts_top1_hits() -> None:
    outputs = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], np.float32)
    labels = np.array([1, 0, 0, 0])
    name, value = score(TaskSpec(), outputs, labels, outputs)
    assert (name, value) == ("accuracy", 0.75)


def test_timing_sessions_use_fixed_threads_and_no_spinning() -> None:
    options = session_options(MeasureSettings(threads=2))
    assert options.intra_op_num_threads == 2
    assert options.inter_op_num_threads == 1
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # spinning threads made sessions timed in one process 4-7x slower (field notes)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    assert providers_for("cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers_for("cpu") == ["CPUExecutionProvider"]
