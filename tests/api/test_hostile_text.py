"""Text no column can store (NUL, control characters, unpaired surrogates) and cursors or
date filters of extreme timestamps are refused with a 4xx problem, on both profiles.

PostgreSQL refuses NUL in text and SQLite does not, so these answered 500 only on the
deployment profile; every operation of the OpenAPI document is called, so a route added
later is covered without being listed here.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import Api, ApiFactory, assert_problem

HOSTILE_SEGMENTS = ["%00", "a%00b", "%01", "x%1fy", "%7f"]
PATH_PARAMETER = re.compile(r"\{[^}]+\}")


@pytest.fixture(params=["sqlite", "postgres"])
def profile_api(request: pytest.FixtureRequest, make_api: ApiFactory) -> Api:
    overrides: dict[str, Any] = {}
    if request.param == "postgres":
        overrides["database_url"] = request.getfixturevalue("postgres_url")
    built = make_api(**overrides)
    # A 500 must come back as a response to assert on, not as the server's exception.
    client = TestClient(
        built.client.app, headers=dict(built.client.headers), raise_server_exceptions=False
    )
    return Api(client=client, settings=built.settings)


def operations_with_path_parameters(api: Api) -> list[tuple[str, str]]:
    document = api.client.get("/openapi.json").json()
    return [
        (method.upper(), path)
        for path, operations in document["paths"].items()
        if PATH_PARAMETER.search(path)
        for method in operations
    ]


def cursor_of(created_at: str, row_id: str) -> str:
    raw = json.dumps([created_at, row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_every_path_parameter_refuses_nul_and_control_characters(profile_api: Api) -> None:
    operations = operations_with_path_parameters(profile_api)
    assert len(operations) >= 15  # jobs, models, datasets, batches, reports, keys, ...
    answered = {}
    for method, path in operations:
        for segment in HOSTILE_SEGMENTS:
            url = PATH_PARAMETER.sub(segment, path)
            body = {} if method == "POST" else None
            response = profile_api.client.request(method, url, json=body)
            answered[f"{method} {url}"] = response.status_code
            assert_problem(response, 422, "invalid_characters")
    assert "GET /v1/jobs/%00" in answered and "POST /v1/api-keys/%00/webhook-secret" in answered


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/v1/tenants", {"name": "a\u0000b"}),
        ("/v1/api-keys", {"name": "\u0000"}),
        ("/v1/api-keys", {"name": "\ud800"}),  # an unpaired surrogate: no UTF-8 for it
        ("/v1/jobs", {"model_id": "mdl_\u0000", "steps": [{"method": "quantize"}]}),
        ("/v1/batches", {"model_ids": ["a\u0000"], "steps": [{"method": "quantize"}]}),
        ("/v1/tenants", {"name": "ok", "a\u0000": 1}),  # keys too
    ],
    ids=["tenant name", "key name", "surrogate", "job spec", "batch", "key"],
)
def test_a_json_string_with_nul_is_refused(
    profile_api: Api, route: str, body: dict[str, Any]
) -> None:
    # Sent as text: json= would escape the surrogate the same way, this keeps it explicit.
    raw = json.dumps(body)
    response = profile_api.client.post(
        route, content=raw, headers={"Content-Type": "application/json"}
    )
    problem = assert_problem(response, 422, "invalid_characters")
    assert "body" in problem["detail"]


def test_names_with_tabs_and_newlines_are_still_stored(profile_api: Api) -> None:
    response = profile_api.client.post("/v1/tenants", json={"name": "team\tA\nsecond line"})
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "team\tA\nsecond line"


@pytest.mark.parametrize(
    "created_at",
    ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-23:59"],
    ids=["year 1 east of UTC", "year 9999 west of UTC"],
)
@pytest.mark.parametrize("route", ["/v1/jobs", "/v1/models", "/v1/datasets", "/v1/batches"])
def test_a_cursor_beyond_the_utc_calendar_is_refused(
    profile_api: Api, route: str, created_at: str
) -> None:
    response = profile_api.client.get(route, params={"cursor": cursor_of(created_at, "x")})
    assert_problem(response, 400, "invalid_cursor")


@pytest.mark.parametrize(
    "query",
    ["created_after=0001-01-01T00:00:00%2B14:00", "created_before=9999-12-31T23:59:59-23:59"],
)
@pytest.mark.parametrize("route", ["/v1/models", "/v1/datasets"])
def test_a_date_filter_beyond_the_utc_calendar_is_refused(
    profile_api: Api, route: str, query: str
) -> None:
    body = assert_problem(profile_api.client.get(f"{route}?{query}"), 422, "invalid_request")
    assert "UTC calendar" in body["detail"]


def test_a_cursor_whose_id_holds_nul_is_refused(profile_api: Api) -> None:
    cursor = cursor_of("2026-01-01T00:00:00+00:00", "job_\u0000")
    assert_problem(
        profile_api.client.get("/v1/jobs", params={"cursor": cursor}), 400, "invalid_cursor"
    )


def test_an_event_position_past_the_id_column_is_refused(
    profile_api: Api, model_file: Path, dataset_file: Path
) -> None:
    spec = {
        "model_id": profile_api.model_id(model_file),
        "eval_dataset_id": profile_api.dataset_id(dataset_file),
        "steps": [{"method": "quantize", "mode": "dynamic"}],
    }
    job = profile_api.submit(spec).json()["id"]
    events = f"/v1/jobs/{job}/events"
    for after in (2**31, 2**63, 10**30):  # job_events.id is a 32-bit INTEGER
        response = profile_api.client.get(events, params={"after": after})
        assert_problem(response, 422, "invalid_request")
    assert profile_api.client.get(events, params={"after": 2**31 - 1}).status_code == 200


def test_a_query_value_with_nul_is_refused(profile_api: Api) -> None:
    response = profile_api.client.get("/v1/jobs?cursor=%00")
    assert_problem(response, 422, "invalid_characters")


def test_ordinary_requests_pass_the_guard(profile_api: Api) -> None:
    assert profile_api.client.get("/v1/jobs", params={"limit": 5}).status_code == 200
    assert profile_api.client.get("/v1/jobs/job_unknown").status_code == 404
    created = profile_api.client.post("/v1/api-keys", json={"name": "ci é ✓"})
    assert created.status_code == 201, created.text
