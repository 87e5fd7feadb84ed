"""The distill step's spec: defaults, the three student sources, and clear refusals."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from core.spec import (
    AutoStudent,
    CnnStudent,
    DistillStep,
    JobSpec,
    StepInputStudent,
    TransformerStudent,
    UploadedStudent,
)


def job(*steps: dict[str, Any], **fields: Any) -> JobSpec:
    spec = {"model_id": "mdl_t", "eval_dataset_id": "ds_e", "train_dataset_id": "ds_t"}
    return JobSpec.model_validate({**spec, "steps": list(steps), **fields})


def test_the_defaults_distill_into_an_auto_student_a_tenth_of_the_teacher() -> None:
    [step] = job({"method": "distill"}).steps

    assert isinstance(step, DistillStep) and isinstance(step.student, AutoStudent)
    assert step.student.parameter_ratio == 0.1
    assert (step.temperature, step.alpha, step.optimizer) == (4.0, 0.9, "adam")
    assert step.seed is None and not step.compare_label_only


@pytest.mark.parametrize(
    ("student", "kind"),
    [
        ({"source": "family", "family": "cnn", "blocks": 3, "parameter_ratio": 0.1}, CnnStudent),
        ({"family": "transformer", "heads": 2, "latency_ratio": 0.3}, TransformerStudent),
        ({"source": "step_input"}, StepInputStudent),
        ({"source": "upload", "model_id": "mdl_s"}, UploadedStudent),
    ],
)
def test_each_student_source_is_read(student: dict[str, Any], kind: type) -> None:
    [step] = job({"method": "distill", "student": student}).steps
    assert isinstance(step, DistillStep) and isinstance(step.student, kind)


def test_a_field_of_another_family_is_refused() -> None:
    with pytest.raises(ValidationError, match="units"):
        job({"method": "distill", "student": {"family": "cnn", "units": 64}})


def test_parameter_and_latency_ratios_exclude_each_other() -> None:
    student = {"family": "mlp", "parameter_ratio": 0.1, "latency_ratio": 0.3}
    with pytest.raises(ValidationError, match="not both"):
        job({"method": "distill", "student": student})


def test_feature_matching_needs_a_student_derived_from_the_teacher() -> None:
    with pytest.raises(ValidationError, match="feature_matching needs a student derived"):
        job({"method": "distill", "feature_matching": 1.0, "student": {"family": "cnn"}})
    job({"method": "distill", "feature_matching": 1.0, "student": {"source": "step_input"}})


def test_distillation_needs_training_data_but_not_labels() -> None:
    with pytest.raises(ValidationError, match="unlabelled data is enough"):
        job({"method": "distill"}, train_dataset_id=None)


def test_a_label_only_comparison_is_refused_for_embeddings() -> None:
    with pytest.raises(ValidationError, match="compare_label_only needs labels"):
        job({"method": "distill", "compare_label_only": True}, task={"kind": "embedding"})


def test_model_ids_list_the_jobs_model_and_the_uploaded_students() -> None:
    spec = job(
        {"method": "prune", "kind": "structured", "fine_tune": {"epochs": 0}},
        {"method": "distill", "student": {"source": "upload", "model_id": "mdl_s"}},
        {"method": "distill", "student": {"source": "upload", "model_id": "mdl_t"}},
    )
    assert spec.model_ids() == ["mdl_t", "mdl_s"]
    assert spec.student_model_ids() == ["mdl_s", "mdl_t"]  # the teacher as its own student
