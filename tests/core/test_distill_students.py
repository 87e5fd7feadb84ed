"""Resolving the spec's student: a family sized to the teacher, the step's input, or an
uploaded ONNX model, and the refusals when a student cannot stand in for the teacher."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from pydantic import TypeAdapter

from core.context import RunContext
from core.distill.students import Teacher, _latency_ratio_measurer, resolve_student
from core.errors import EngineError, InputError, UnsupportedModel
from core.families import MlpFamily
from core.formats import inspect_model
from core.measure import count_parameters
from core.spec import Student, StudentConfig
from tests.factories import digits_arrays, hardmax_classifier_onnx, student_cnn_onnx

IMAGES, _ = digits_arrays("train")
FEEDS = {"input": IMAGES[:64]}
STUDENT: TypeAdapter[StudentConfig] = TypeAdapter(Student)


def teacher_of(path: Path) -> Teacher:
    info = inspect_model(path)
    return Teacher(path, info, 0, (10,), count_parameters(path))


def resolve(
    spec: dict[str, Any],
    teacher: Path,
    tmp_path: Path,
    *,
    step_input: Path | None = None,
    models: dict[str, Path] | None = None,
) -> Any:
    return resolve_student(
        STUDENT.validate_python(spec),
        step_input or teacher,
        teacher_of(teacher),
        FEEDS,
        models or {},
        8,
        RunContext(work_dir=tmp_path),
    )


def outputs_of(module: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module.eval()(torch.from_numpy(images)).numpy()


def test_auto_builds_a_cnn_for_images_at_the_parameter_ratio(
    cnn_onnx: Path, tmp_path: Path
) -> None:
    student = resolve({"parameter_ratio": 0.1}, cnn_onnx, tmp_path)

    teacher_parameters = count_parameters(cnn_onnx)
    assert student.description["family"] == "cnn"
    assert student.description["family_chosen_by"] == "input rank"
    assert 0.08 * teacher_parameters <= student.description["torch_parameters"]
    assert student.description["torch_parameters"] <= 0.1 * teacher_parameters
    assert outputs_of(student.module, IMAGES[:3]).shape == (3, 10)
    assert [t.name for t in student.outputs] == ["logits"]


def test_a_named_family_keeps_the_fields_given(cnn_onnx: Path, tmp_path: Path) -> None:
    spec = {"family": "mlp", "layers": 3, "activation": "gelu", "parameter_ratio": 0.05}
    student = resolve(spec, cnn_onnx, tmp_path)

    architecture = student.description["architecture"]
    assert architecture["layers"] == 3 and architecture["activation"] == "gelu"
    assert student.description["family_chosen_by"] == "spec"
    assert student.description["torch_parameters"] <= 0.05 * count_parameters(cnn_onnx)


def test_without_a_ratio_the_family_is_built_as_configured(cnn_onnx: Path, tmp_path: Path) -> None:
    student = resolve({"family": "cnn", "width": 4, "blocks": 1}, cnn_onnx, tmp_path)

    assert student.description["architecture"]["width"] == 4
    assert student.description["sizing"] is None


def test_a_family_that_does_not_fit_the_input_is_refused(mlp_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"\(C, H, W\)") as raised:
        resolve_student(
            STUDENT.validate_python({"family": "cnn"}),
            mlp_onnx,
            Teacher(mlp_onnx, inspect_model(mlp_onnx), 0, (32,), count_parameters(mlp_onnx)),
            {"input": IMAGES[:8].reshape(8, 64)},
            {},
            8,
            RunContext(work_dir=tmp_path),
        )
    assert raised.value.code == "invalid_student"


def test_a_ratio_no_width_reaches_is_refused(cnn_onnx: Path, tmp_path: Path) -> None:
    spec = {"family": "cnn", "blocks": 8, "growth": 4.0, "parameter_ratio": 0.001}
    with pytest.raises(InputError, match="smallest cnn student") as raised:
        resolve(spec, cnn_onnx, tmp_path)
    assert raised.value.code == "invalid_student"


def test_the_step_input_becomes_a_module_computing_what_it_computes(
    cnn_onnx: Path, tmp_path: Path
) -> None:
    student = resolve({"source": "step_input"}, cnn_onnx, tmp_path)

    session = ort.InferenceSession(str(cnn_onnx), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {"input": IMAGES[:5]})
    np.testing.assert_allclose(outputs_of(student.module, IMAGES[:5]), expected, atol=1e-5)
    assert student.description["source"] == "step_input"


def test_an_uploaded_student_is_converted_and_its_input_matched_by_position(
    cnn_onnx: Path, tmp_path: Path
) -> None:
    upload = student_cnn_onnx(tmp_path / "student.onnx", input_name="pixels")
    student = resolve(
        {"source": "upload", "model_id": "mdl_student"},
        cnn_onnx,
        tmp_path,
        models={"mdl_student": upload},
    )

    session = ort.InferenceSession(str(upload), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {"pixels": IMAGES[:5]})
    np.testing.assert_allclose(outputs_of(student.module, IMAGES[:5]), expected, atol=1e-5)
    assert [t.name for t in student.inputs] == ["input"]  # exported under the teacher's names
    assert student.description["model_id"] == "mdl_student"


def test_an_uploaded_student_with_another_output_shape_is_refused(
    cnn_onnx: Path, tmp_path: Path
) -> None:
    upload = student_cnn_onnx(tmp_path / "five.onnx", classes=5)
    with pytest.raises(InputError, match=r"\[5\] per sample, the teacher's \[10\]") as raised:
        resolve({"source": "upload", "model_id": "m"}, cnn_onnx, tmp_path, models={"m": upload})
    assert raised.value.code == "invalid_student"


def test_a_student_onnx2torch_cannot_convert_fails_naming_the_op(
    cnn_onnx: Path, tmp_path: Path
) -> None:
    upload = hardmax_classifier_onnx(tmp_path / "hardmax.onnx")
    with pytest.raises(UnsupportedModel, match="Hardmax") as raised:
        resolve({"source": "upload", "model_id": "m"}, cnn_onnx, tmp_path, models={"m": upload})
    assert raised.value.code == "unsupported_op"


def test_an_uploaded_student_the_engine_was_not_given_is_an_error(
    cnn_onnx: Path, tmp_path: Path
) -> None:
    with pytest.raises(EngineError, match="mdl_gone") as raised:
        resolve({"source": "upload", "model_id": "mdl_gone"}, cnn_onnx, tmp_path)
    assert raised.value.code == "model_missing"


def test_latency_ratios_are_measured_against_the_teacher_in_onnx_runtime(
    cnn_onnx: Path, tmp_path: Path
) -> None:
    measure = _latency_ratio_measurer(
        teacher_of(cnn_onnx), (1, 8, 8), 10, FEEDS, 8, RunContext(work_dir=tmp_path)
    )

    tiny = measure(MlpFamily(layers=1, units=2))
    huge = measure(MlpFamily(layers=4, units=2048))

    assert 0 < tiny < huge
    assert len(list((tmp_path / "latency-candidates").glob("*.onnx"))) == 2
