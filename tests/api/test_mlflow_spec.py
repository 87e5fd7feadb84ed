"""Submissions that name MLflow: checked at the door (no MLflow server is needed here)."""

from __future__ import annotations

import pytest

from tests.api.conftest import Api, ApiFactory, Uploaded, assert_problem

TRACKING = {"mlflow_tracking_uri": "http://127.0.0.1:9"}


def mlflow_spec(uploaded: Uploaded, **overrides: object) -> dict[str, object]:
    spec = uploaded.spec(model_uri="models:/digits/3", **overrides)
    del spec["model_id"]
    return spec


@pytest.mark.parametrize(
    "uri",
    ["digits/3", "models:/digits", "models:/digits/latest", "models:/digits/0", "runs:/abc/model",
     "models:/digits@", "models:/a/b/3"],
)
def test_a_malformed_model_uri_is_refused_with_the_forms_to_write(
    make_api: ApiFactory, model_file: object, dataset_file: object, uri: str
) -> None:
    api = make_api(**TRACKING)
    dataset_id = api.dataset_id(dataset_file)  # type: ignore[arg-type]
    response = api.submit(
        {"model_uri": uri, "eval_dataset_id": dataset_id, "steps": [{"method": "quantize"}]}
    )
    body = assert_problem(response, 422, "invalid_request")
    assert "models:/<name>/<version>" in body["detail"]
    assert "models:/<name>@<alias>" in body["detail"]


def test_model_uri_needs_mlflow_configured(api: Api, uploaded: Uploaded) -> None:
    body = assert_problem(api.submit(mlflow_spec(uploaded)), 422, "mlflow_not_configured")
    assert "SQUEEZE_MLFLOW_TRACKING_URI" in body["detail"]


def test_registering_needs_mlflow_configured(api: Api, uploaded: Uploaded) -> None:
    body = assert_problem(api.submit(uploaded.spec(registry={})), 422, "mlflow_not_configured")
    assert "registry" in body["detail"]


def test_a_model_uri_job_is_accepted_and_keeps_its_uri(
    make_api: ApiFactory, model_file: object, dataset_file: object
) -> None:
    api = make_api(**TRACKING)
    dataset_id = api.dataset_id(dataset_file)  # type: ignore[arg-type]
    response = api.submit(
        {
            "model_uri": "models:/digits@champion",
            "eval_dataset_id": dataset_id,
            "steps": [{"method": "quantize"}],
            "registry": {"name": "digits-small"},
        }
    )
    assert response.status_code == 202, response.text
    spec = response.json()["spec"]
    assert spec["model_uri"] == "models:/digits@champion"
    assert spec["model_id"] is None
    assert spec["registry"] == {"kind": "mlflow", "name": "digits-small"}


def test_model_id_and_model_uri_together_are_refused(
    make_api: ApiFactory, model_file: object, dataset_file: object
) -> None:
    api = make_api(**TRACKING)
    spec = {
        "model_id": api.model_id(model_file),  # type: ignore[arg-type]
        "model_uri": "models:/digits/1",
        "eval_dataset_id": api.dataset_id(dataset_file),  # type: ignore[arg-type]
        "steps": [{"method": "quantize"}],
    }
    body = assert_problem(api.submit(spec), 422, "invalid_request")
    assert "not both" in body["detail"]


def test_a_spec_without_a_model_says_which_fields_name_one(
    make_api: ApiFactory, dataset_file: object
) -> None:
    api = make_api(**TRACKING)
    spec = {
        "eval_dataset_id": api.dataset_id(dataset_file),  # type: ignore[arg-type]
        "steps": [{"method": "quantize"}],
    }
    body = assert_problem(api.submit(spec), 422, "invalid_request")
    assert "model_id" in body["detail"] and "model_uri" in body["detail"]


def test_a_batch_takes_its_models_from_model_ids_not_model_uri(
    make_api: ApiFactory, model_file: object, dataset_file: object
) -> None:
    api = make_api(**TRACKING)
    body = {
        "model_ids": [api.model_id(model_file)],  # type: ignore[arg-type]
        "spec": {
            "model_uri": "models:/digits/1",
            "eval_dataset_id": api.dataset_id(dataset_file),  # type: ignore[arg-type]
            "steps": [{"method": "quantize"}],
        },
    }
    problem = assert_problem(api.client.post("/v1/batches", json=body), 422, "invalid_request")
    assert "model_ids" in problem["detail"] and "model_uri" in problem["detail"]


def test_a_batch_that_registers_needs_mlflow_configured(api: Api, uploaded: Uploaded) -> None:
    spec = uploaded.spec(registry={})
    del spec["model_id"]
    body = {"model_ids": [uploaded.model_id], "spec": spec}
    assert_problem(api.client.post("/v1/batches", json=body), 422, "mlflow_not_configured")
