"""The teacher's outputs: computed once per teacher and dataset, then read from the cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from core.context import MeasureSettings
from core.distill import teacher
from core.distill.teacher import as_logits, teacher_outputs
from core.formats import inspect_model
from tests.factories import digits_arrays

IMAGES, _ = digits_arrays("train")


@pytest.fixture
def session_opens(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every ONNX Runtime session the teacher module opens, by model path."""
    opened: list[Path] = []
    real = teacher.open_session

    def counting(path: Path, *args: Any) -> ort.InferenceSession:
        opened.append(path)
        return real(path, *args)

    monkeypatch.setattr(teacher, "open_session", counting)
    return opened


def run_teacher(model: Path, images: np.ndarray, cache_dir: Path) -> teacher.TeacherOutputs:
    info = inspect_model(model)
    return teacher_outputs(
        model, {"input": images}, "logits", info.inputs, cache_dir, MeasureSettings(), "cpu"
    )


def test_the_outputs_are_the_teachers_in_onnx_runtime(cnn_onnx: Path, tmp_path: Path) -> None:
    result = run_teacher(cnn_onnx, IMAGES[:100], tmp_path)

    session = ort.InferenceSession(str(cnn_onnx), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {"input": IMAGES[:100]})
    np.testing.assert_allclose(result.outputs, expected, rtol=1e-6)
    assert result.outputs.dtype == np.float32 and not result.from_cache


def test_a_second_call_reads_the_cache_without_running_the_teacher(
    cnn_onnx: Path, tmp_path: Path, session_opens: list[Path]
) -> None:
    first = run_teacher(cnn_onnx, IMAGES[:100], tmp_path)
    second = run_teacher(cnn_onnx, IMAGES[:100], tmp_path)

    assert session_opens == [cnn_onnx]
    assert second.from_cache and second.cache_path == first.cache_path
    np.testing.assert_array_equal(second.outputs, first.outputs)


def test_other_rows_or_another_teacher_are_not_served_from_the_cache(
    cnn_onnx: Path, mlp_onnx: Path, tmp_path: Path, session_opens: list[Path]
) -> None:
    first = run_teacher(cnn_onnx, IMAGES[:100], tmp_path)
    fewer = run_teacher(cnn_onnx, IMAGES[:99], tmp_path)
    changed = IMAGES[:100].copy()
    changed[0, 0, 0, 0] += 0.5
    edited = run_teacher(cnn_onnx, changed, tmp_path)

    assert not fewer.from_cache and not edited.from_cache
    assert len({first.cache_path, fewer.cache_path, edited.cache_path}) == 3
    assert len(session_opens) == 3
    assert teacher.cache_key(cnn_onnx, {"input": IMAGES[:10]}, "logits") != teacher.cache_key(
        mlp_onnx, {"input": IMAGES[:10]}, "logits"
    )


def test_probabilities_become_logits_and_logits_stay_as_they_are() -> None:
    logits = np.array([[2.0, -1.0, 0.5]], np.float32)
    probabilities = np.exp(logits) / np.exp(logits).sum()

    converted, were_probabilities = as_logits(probabilities)
    unchanged, were_logits_probabilities = as_logits(logits)

    assert were_probabilities and not were_logits_probabilities
    assert unchanged is logits
    # equal up to a per-row constant, which softmax ignores
    np.testing.assert_allclose(converted - converted[:, :1], logits - logits[:, :1], atol=1e-5)
