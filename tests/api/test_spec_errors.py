"""Spec errors name the field as the user wrote it, list what is allowed there and suggest
the nearest name: no validation-library jargon reaches the problem's detail."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import Api, assert_problem

BASE: dict[str, Any] = {
    "model_id": "mdl_x",
    "eval_dataset_id": "ds_x",
    "steps": [{"method": "quantize"}],
}

JARGON = ("discriminator", "Input tag", "Extra inputs", "Input should", "Value error", "_step")


def refused(api: Api, spec: dict[str, Any]) -> dict[str, Any]:
    body = assert_problem(api.submit(spec), 422, "invalid_request")
    assert not any(word in body["detail"] for word in JARGON), body["detail"]
    assert api.row_counts()["jobs"] == 0
    return body


def test_an_unknown_field_is_named_by_its_path_with_the_nearest_allowed_one(api: Api) -> None:
    body = refused(api, {**BASE, "targets": {"max_drop": 0.01}})

    assert body["detail"].startswith(
        "`targets.max_drop`: unknown field of `targets`; did you mean `max_metric_drop`? "
        "Allowed: max_metric_drop, metric_drop_mode,"
    )
    assert body["errors"][0]["path"] == "targets.max_drop"
    assert body["errors"][0]["loc"] == ["body", "targets", "max_drop"]


def test_an_unknown_step_method_lists_the_methods_and_suggests_one(api: Api) -> None:
    body = refused(api, {**BASE, "steps": [{"method": "quantise"}]})

    assert body["detail"] == (
        "`steps[0].method` must be one of quantize, prune, distill, search, auto; "
        "got `quantise` — did you mean `quantize`?"
    )


def test_a_step_without_a_method_says_which_field_is_missing(api: Api) -> None:
    body = refused(api, {**BASE, "steps": [{"mode": "static"}]})

    assert body["detail"] == (
        "`steps[0].method` is missing: give one of quantize, prune, distill, search, auto"
    )


def test_an_unknown_quantize_mode_is_named_without_the_union_s_tags(api: Api) -> None:
    body = refused(api, {**BASE, "steps": [{"method": "quantize", "mode": "statc"}]})

    assert body["detail"] == (
        "`steps[0].mode` must be one of auto, dynamic, static, fp16, int4, qat; "
        "got `statc` — did you mean `static`?"
    )


def test_an_unknown_field_of_a_step_names_the_step_s_variant(api: Api) -> None:
    body = refused(
        api, {**BASE, "steps": [{"method": "quantize", "mode": "static", "calib_samples": 8}]}
    )

    assert body["detail"].startswith(
        "`steps[0].calib_samples`: unknown field of `steps[0]` (quantize, static); "
        "did you mean `calibration_samples`?"
    )


def test_a_nested_student_field_is_found_through_two_unions(api: Api) -> None:
    spec = {
        **BASE,
        "train_dataset_id": "ds_t",
        "steps": [{"method": "distill", "student": {"family": "cnn", "widht": 8}}],
    }
    body = refused(api, spec)

    assert body["detail"].startswith(
        "`steps[0].student.widht`: unknown field of `steps[0].student` (distill, family, cnn); "
        "did you mean `width`?"
    )


def test_a_literal_lists_its_values_and_maps_a_synonym(api: Api) -> None:
    body = refused(api, {**BASE, "device": "gpu"})

    assert body["detail"] == (
        "`device` must be one of auto, cpu, cuda; got `gpu` — did you mean `cuda`?"
    )


def test_a_wrong_type_says_what_the_field_takes(api: Api) -> None:
    body = refused(api, {**BASE, "batch_size": "eight"})

    assert body["detail"] == "`batch_size` must be a whole number; got `eight`"


def test_a_bound_says_the_limit(api: Api) -> None:
    body = refused(api, {**BASE, "targets": {"max_metric_drop": -0.5}})

    assert body["detail"] == "`targets.max_metric_drop` must be >= 0.0; got -0.5"


def test_a_missing_field_is_named(api: Api) -> None:
    body = refused(api, {"model_id": "mdl_x", "steps": [{"method": "quantize"}]})

    assert body["detail"] == "`eval_dataset_id` is required"


def test_a_plain_union_reports_one_sentence_for_its_members(api: Api) -> None:
    body = refused(api, {**BASE, "task": {"inputs": {"input.1": 5}}})

    assert body["detail"] == '`task.inputs["input.1"]` must be a string or an object; got 5'


def test_a_rule_of_the_spec_keeps_its_own_sentence(api: Api) -> None:
    body = refused(api, {"model_id": "mdl_x", "eval_dataset_id": "ds_x"})

    assert body["detail"] == 'give steps, or a goal for an auto job (e.g. "goal": {"speedup": 2})'


def test_a_batch_s_spec_errors_carry_the_path_inside_the_batch(api: Api) -> None:
    response = api.client.post(
        "/v1/batches",
        json={"model_ids": ["mdl_x"], "spec": {"eval_dataset_id": "ds_x", "stepz": []}},
    )

    body = assert_problem(response, 422, "invalid_request")
    assert "`spec.stepz`: unknown field of `spec`; did you mean `steps`?" in body["detail"]


def test_a_query_parameter_is_named_as_one(api: Api) -> None:
    response = api.client.get("/v1/jobs", params={"state": "done"})

    body = assert_problem(response, 422, "invalid_request")

    assert body["detail"].startswith("query parameter `state` must be one of queued, running")


@pytest.mark.parametrize("body", [b"{not json", b'{"model_id": '])
def test_a_body_that_is_not_json_says_so(api: Api, body: bytes) -> None:
    response = api.client.post(
        "/v1/jobs", content=body, headers={"content-type": "application/json"}
    )

    problem = assert_problem(response, 422, "invalid_request")
    assert problem["detail"].startswith("The body is not valid JSON")
