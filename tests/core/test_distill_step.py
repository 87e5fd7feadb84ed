"""The distill step on small digits models: what it exports and what its report says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from core.context import RunContext
from core.errors import IncompatibleData
from core.formats import inspect_model
from core.measure import count_parameters
from core.registry import StepData, StepOutput, get_step
from core.spec import DistillStep, TaskSpec
from tests.factories import digits_arrays, student_cnn_onnx

TRAIN_IMAGES, TRAIN_LABELS = (a[:256] for a in digits_arrays("train"))
EVAL_IMAGES, EVAL_LABELS = (a[:128] for a in digits_arrays("test"))
Events = list[tuple[float, str, dict[str, Any]]]


def digits_data(teacher: Path, *, labels: bool = True) -> StepData:
    train: dict[str, np.ndarray] = {"input": TRAIN_IMAGES}
    if labels:
        train["label"] = TRAIN_LABELS
    return StepData(
        eval_arrays={"input": EVAL_IMAGES, "label": EVAL_LABELS},
        calibration_arrays={"input": EVAL_IMAGES},
        inputs=inspect_model(teacher).inputs,
        task=TaskSpec(),
        train_arrays=train,
        original_model_path=teacher,
    )


def distill(
    model: Path, spec: dict[str, Any], data: StepData, work_dir: Path, events: Events | None = None
) -> StepOutput:
    config = DistillStep.model_validate({"method": "distill", "epochs": 2, **spec})
    sink = events if events is not None else []
    ctx = RunContext(work_dir=work_dir, on_progress=lambda p, m, d: sink.append((p, m, d)))
    return get_step("distill")(model, config, data, ctx)


def ort_outputs(path: Path, images: np.ndarray, name: str = "input") -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {name: images})[0])


def accuracy(path: Path) -> float:
    return float(np.mean(ort_outputs(path, EVAL_IMAGES).argmax(axis=1) == EVAL_LABELS))


def test_a_family_student_is_trained_exported_and_compared_to_label_only_training(
    cnn_onnx: Path, tmp_path: Path
) -> None:
    events: Events = []
    output = distill(
        cnn_onnx, {"compare_label_only": True}, digits_data(cnn_onnx), tmp_path, events
    )

    info = inspect_model(output.model_path)
    assert [t.name for t in info.inputs] == ["input"] and [t.name for t in info.outputs] == [
        "logits"
    ]
    assert isinstance(info.inputs[0].shape and info.inputs[0].shape[0], str)  # dynamic batch
    details = output.details
    assert details["student"]["family"] == "cnn"
    assert details["parameters"]["teacher"] == count_parameters(cnn_onnx)
    assert details["parameters"]["student"] == count_parameters(output.model_path)
    assert details["parameters"]["ratio"] <= 0.1
    metrics = details["eval_metric"]
    assert details["eval_metric_name"] == "accuracy"
    assert metrics["teacher"] == pytest.approx(accuracy(cnn_onnx))
    assert metrics["distilled"] == pytest.approx(accuracy(output.model_path))
    assert metrics["label_only"] is not None
    assert details["best_epoch"] in (1, 2)
    assert len(details["epochs"]) == len(details["label_only"]["epochs"]) == 3  # epoch 0..2
    assert details["loss"]["labels_used"] and "KL" in details["loss"]["formula"]
    assert details["training"]["seed"] == 0 and details["training"]["training_device"] == "cpu"
    phases = [(d.get("phase"), d.get("epoch")) for _, _, d in events if "phase" in d]
    assert phases == [("distill", 1), ("distill", 2), ("label-only", 1), ("label-only", 2)]


def test_the_teacher_is_the_jobs_original_whatever_the_step_receives(
    cnn_onnx: Path, tmp_path: Path
) -> None:
    untrained = student_cnn_onnx(tmp_path / "untrained.onnx")
    output = distill(untrained, {"epochs": 1}, digits_data(cnn_onnx), tmp_path / "step")

    assert output.details["parameters"]["teacher"] == count_parameters(cnn_onnx)
    assert output.details["eval_metric"]["teacher"] == pytest.approx(accuracy(cnn_onnx))


def test_the_step_input_trains_on_with_feature_matching(cnn_onnx: Path, tmp_path: Path) -> None:
    output = distill(
        cnn_onnx,
        {"student": {"source": "step_input"}, "feature_matching": 0.5, "epochs": 1},
        digits_data(cnn_onnx),
        tmp_path,
    )

    pairs = output.details["loss"]["feature_pairs"]
    assert len(pairs) == 3  # two convolutions and the hidden Linear; the output layer is not
    assert output.details["parameters"]["student"] == count_parameters(cnn_onnx)
    assert output.details["student"]["source"] == "step_input"


def test_unlabelled_training_data_is_enough(cnn_onnx: Path, tmp_path: Path) -> None:
    output = distill(cnn_onnx, {"epochs": 1}, digits_data(cnn_onnx, labels=False), tmp_path)

    assert not output.details["loss"]["labels_used"]
    assert "KL" in output.details["loss"]["formula"]
    assert "CE" not in output.details["loss"]["formula"]
    assert any("no labels" in note for note in output.details["notes"])


def test_a_label_only_comparison_without_labels_fails_before_training(
    cnn_onnx: Path, tmp_path: Path
) -> None:
    events: Events = []
    with pytest.raises(IncompatibleData, match="compare_label_only"):
        distill(
            cnn_onnx,
            {"compare_label_only": True},
            digits_data(cnn_onnx, labels=False),
            tmp_path,
            events,
        )
    assert not any("epoch" in d for _, _, d in events)


def test_an_embedding_teacher_is_matched_by_cosine(mlp_onnx: Path, tmp_path: Path) -> None:
    flat_train = TRAIN_IMAGES.reshape(-1, 64)
    data = StepData(
        eval_arrays={"input": EVAL_IMAGES.reshape(-1, 64)},
        calibration_arrays={"input": EVAL_IMAGES.reshape(-1, 64)},
        inputs=inspect_model(mlp_onnx).inputs,
        task=TaskSpec(kind="embedding"),
        train_arrays={"input": flat_train},
        original_model_path=mlp_onnx,
    )
    spec = {"student": {"family": "mlp", "parameter_ratio": 0.2}, "output_loss": "cosine"}
    output = distill(mlp_onnx, {**spec, "epochs": 3}, data, tmp_path)

    details = output.details
    assert details["eval_metric_name"] == "cosine_similarity"
    assert details["loss"]["formula"] == "cosine(s, t)"
    assert details["eval_metric"]["distilled"] > details["epochs"][0]["eval_metric"] + 0.1
    assert [t.name for t in inspect_model(output.model_path).outputs] == ["embedding"]
    assert ort_outputs(output.model_path, flat_train[:3]).shape == (3, 32)
