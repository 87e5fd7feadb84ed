"""core.spec_errors: pydantic's locations and words turned into the user's JSON paths."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from core.spec import JobSpec
from core.spec_errors import describe_all, json_path, suggest

BASE: dict[str, Any] = {"model_id": "m", "eval_dataset_id": "d"}


def sentences(spec: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as raised:
        JobSpec.model_validate(spec)
    return [e.message for e in describe_all(raised.value.errors(), spec, JobSpec)]


def test_json_paths_read_like_the_document() -> None:
    assert json_path(["steps", 0, "targets", "max_drop"]) == "steps[0].targets.max_drop"
    assert json_path(["task", "inputs", "input.1"]) == 'task.inputs["input.1"]'
    assert json_path([]) == ""


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("max_drop", "max_metric_drop"),
        ("quantise", "quantize"),
        ("gpu", "cuda"),
        ("Static", "static"),
    ],
)
def test_the_nearest_allowed_name_is_suggested(typed: str, meant: str) -> None:
    allowed = ["max_metric_drop", "metric_drop_mode", "quantize", "prune", "cuda", "cpu", "static"]
    assert suggest(typed, allowed) == meant


def test_nothing_is_suggested_for_a_word_near_no_allowed_one() -> None:
    assert suggest("teleport", ["quantize", "prune", "distill"]) is None


def test_a_trailing_union_tag_that_is_also_a_key_is_not_doubled() -> None:
    # the student's `family` is both the outer union's tag and the field the user wrote
    step = {"method": "distill", "student": {"family": "cnnn"}}
    spec = {**BASE, "train_dataset_id": "t", "steps": [step]}

    assert sentences(spec) == [
        "`steps[0].student.family` must be one of auto, cnn, mlp, transformer; got `cnnn` "
        "— did you mean `cnn`?"
    ]


def test_a_validator_s_wrapper_in_the_location_is_not_a_place() -> None:
    spec = {**BASE, "steps": [{"method": "quantize"}], "task": {"inputs": {"x": {"aray": "x"}}}}

    assert sentences(spec) == [
        "`task.inputs.x.aray`: unknown field of `task.inputs.x`; did you mean `array`? "
        "Allowed: array, sample_axis, per_sample, constant"
    ]


def test_a_step_that_is_not_an_object_is_named_by_its_index() -> None:
    assert sentences({**BASE, "steps": [5]}) == [
        "`steps[0]` must be an object with `method`: one of quantize, prune, distill, "
        "search, auto; got 5"
    ]
