"""Errors are problem+json with stable codes, whatever raised them; the app's metadata."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.errors import ApiError
from api.problems import RULES, json_safe, rule_for
from tests.api.conftest import Api, assert_problem


def test_an_unknown_route_is_a_404_problem(api: Api) -> None:
    assert_problem(api.client.get("/v1/nothing-here"), 404, "not_found")


def test_a_wrong_method_is_a_405_problem_naming_the_allowed_ones(api: Api) -> None:
    response = api.client.delete("/healthz")

    assert_problem(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "GET"


def test_an_unexpected_error_is_a_500_problem_that_hides_the_details(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    app = api.client.app

    @app.get("/boom")  # type: ignore[attr-defined, untyped-decorator]
    def boom() -> None:
        raise RuntimeError("secret internals")

    client = TestClient(app, raise_server_exceptions=False)

    body = assert_problem(client.get("/boom"), 500, "internal_error")

    assert "secret" not in body["detail"]
    assert any("secret internals" in str(record.exc_info) for record in caplog.records)


def test_validation_errors_are_listed_and_json_safe(api: Api) -> None:
    response = api.client.post(
        "/v1/jobs", content=b'{"batch_size": NaN}', headers={"content-type": "application/json"}
    )

    body = assert_problem(response, 422, "invalid_request")
    locations = {tuple(error["loc"]) for error in body["errors"]}
    assert ("body", "eval_dataset_id") in locations
    assert ("body", "batch_size") in locations
    assert all("url" not in error for error in body["errors"])


def test_every_api_error_has_a_status() -> None:
    def subclasses(cls: type[Exception]) -> list[type[Exception]]:
        return [cls, *(sub for direct in cls.__subclasses__() for sub in subclasses(direct))]

    for error_type in subclasses(ApiError):
        assert error_type in RULES, error_type


def test_the_most_specific_rule_wins() -> None:
    from core.errors import IncompatibleData, InputError

    assert rule_for(IncompatibleData("x")) is RULES[IncompatibleData]
    assert rule_for(InputError("x")) is RULES[InputError]
    assert rule_for(KeyError("x")) is None


def test_a_client_that_hangs_up_mid_upload_is_not_a_server_error() -> None:
    from starlette.requests import ClientDisconnect

    rule = rule_for(ClientDisconnect())

    assert rule is not None and rule.status < 500


def test_json_safe_turns_exceptions_bytes_and_non_finite_floats_into_json() -> None:
    value = {"ctx": {"error": ValueError("bad")}, "input": b"\xff", "n": float("nan"), 1: (2,)}

    assert json_safe(value) == {"ctx": {"error": "bad"}, "input": "\ufffd", "n": "nan", "1": [2]}


def test_openapi_describes_the_service(api: Api) -> None:
    schema = api.client.get("/openapi.json").json()

    assert schema["info"]["title"] == "squeeze"
    assert schema["info"]["version"] == "0.1.0"
    assert {"/v1/models", "/v1/datasets", "/v1/jobs", "/readyz"} <= set(schema["paths"])
    upload = schema["paths"]["/v1/models"]["post"]["requestBody"]["content"]
    assert "file" in upload["multipart/form-data"]["schema"]["properties"]


def test_interactive_docs_are_served(api: Api) -> None:
    assert api.client.get("/docs").status_code == 200
