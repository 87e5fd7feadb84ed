"""Schema fuzzing with schemathesis over the OpenAPI document, with a fixed budget.

Every operation is called with generated requests (as the admin; tests/api/test_tenants.py
checks that every operation refuses anonymous callers), on SQLite and on PostgreSQL, then
stateful sequences follow the document's links from creating a job to reading, cancelling
and listing it. The service must answer no 5xx and every response must match the
document: status, content type, headers and body schema.

Generated requests are biased towards the inputs that broke the deployment profile: the
hooks below put NUL and control characters into path parameters, query values and JSON
strings, and cursors of timestamps at the edges of the calendar into `cursor`. PostgreSQL
refuses what SQLite stores, so only the run on PostgreSQL can find that class.
"""

from __future__ import annotations

import atexit
import base64
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from service.settings import Settings
from tests import services
from tests.api.conftest import ADMIN_TOKEN

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# The fixed budget: derandomized, so a run is reproducible and CI time is bounded.
BUDGET = settings(
    max_examples=15,
    derandomize=True,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)

_DATA_DIR = Path(tempfile.mkdtemp(prefix="squeeze-fuzz-"))


def fuzz_settings(data_dir: Path, **overrides: Any) -> Settings:
    return Settings(
        data_dir=data_dir,
        admin_api_key=ADMIN_TOKEN,
        absent_worker_policy="off",  # no worker runs here
        # Small caps: fuzzed uploads stay cheap.
        max_model_bytes=2_000_000,
        max_dataset_bytes=2_000_000,
        # The fuzzer writes faster than any client should: a rate limit would answer most
        # of its calls 429 before they reach the routes under test.
        rate_limit_per_s=0,
        **overrides,
    )


def postgres_app() -> tuple[Any, Exception | None]:
    """The app on a database of its own on the PostgreSQL server (dropped at exit); the
    SQLite app and the error when the server does not answer. Built at import, as the
    SQLite app is: schemathesis parametrizes from a schema object at collection."""
    try:
        name = services.create_database()
    except Exception as error:
        return APP, error
    atexit.register(services.drop_database, name)
    settings = fuzz_settings(
        Path(tempfile.mkdtemp(prefix="squeeze-fuzz-pg-")),
        database_url=services.postgres_url_for(name),
    )
    return create_app(settings), None


APP = create_app(fuzz_settings(_DATA_DIR))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
# The same document served by an app on PostgreSQL, which refuses what SQLite stores.
POSTGRES_APP, POSTGRES_ERROR = postgres_app()
postgres_schema = schemathesis.openapi.from_asgi("/openapi.json", POSTGRES_APP)

# --- what the generated requests are biased towards ---------------------------------------

# NUL and other control characters: PostgreSQL refuses NUL in text, SQLite stores it.
HOSTILE_TEXT = st.sampled_from(["\x00", "a\x00b", "\x00" * 3, "\x01", "x\x1fy", "\x7f"])


def cursor_of(created_at: str, row_id: str) -> str:
    raw = json.dumps([created_at, row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# Timestamps that parse but have no UTC time, a NUL id, and the calendar's own edges.
HOSTILE_CURSORS = st.sampled_from(
    [
        cursor_of("0001-01-01T00:00:00+14:00", "x"),
        cursor_of("9999-12-31T23:59:59-23:59", "x"),
        cursor_of("0001-01-01T00:00:00+00:00", "x"),
        cursor_of("9999-12-31T23:59:59.999999+00:00", "x"),
        cursor_of("2026-01-01T00:00:00+00:00", "id\x00"),
    ]
)


def _with_hostile_values(values: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """The values as generated, or with one of them replaced by hostile text."""
    if not values:
        return st.just(values)
    replaced = st.tuples(st.sampled_from(sorted(values)), HOSTILE_TEXT).map(
        lambda pair: {**values, pair[0]: pair[1]}
    )
    return st.one_of(st.just(values), replaced)


@schemathesis.hook
def flatmap_path_parameters(
    context: Any, path_parameters: dict[str, Any]
) -> st.SearchStrategy[dict[str, Any]]:
    return _with_hostile_values(path_parameters or {})


HOSTILE_INTEGERS = st.sampled_from([2**31, 2**63, 10**30, -(2**63) - 1])
# Date filters that parse but have no UTC time.
HOSTILE_DATES = st.sampled_from(["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-23:59"])


@schemathesis.hook
def flatmap_query(context: Any, query: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    query = query or {}
    options = [_with_hostile_values(query)]
    if "cursor" in query:
        options.append(HOSTILE_CURSORS.map(lambda cursor: {**query, "cursor": cursor}))
    for field in ("created_after", "created_before"):
        if field in query:
            options.append(HOSTILE_DATES.map(lambda date, f=field: {**query, f: date}))
    # Integers at the edges of 32- and 64-bit columns (a bound the document declares
    # makes these a 422; one it lacks reaches the database).
    numbers = [key for key, value in query.items() if isinstance(value, int)]
    if numbers:
        extreme = st.tuples(st.sampled_from(numbers), HOSTILE_INTEGERS)
        options.append(extreme.map(lambda pair: {**query, pair[0]: pair[1]}))
    return st.one_of(*options)


def _string_leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, str):
        yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _string_leaves(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _string_leaves(item, (*path, index))


def _replaced(value: Any, path: tuple[Any, ...], text: str) -> Any:
    if not path:
        return text
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replaced(value[head], rest, text)}
    copy = list(value)
    copy[head] = _replaced(copy[head], rest, text)
    return copy


@schemathesis.hook
def flatmap_body(context: Any, body: Any) -> st.SearchStrategy[Any]:
    """A JSON body as generated, or with one of its strings replaced by hostile text."""
    leaves = list(_string_leaves(body)) if isinstance(body, dict | list) else []
    if not leaves:
        return st.just(body)
    replaced = st.tuples(st.sampled_from(leaves), HOSTILE_TEXT).map(
        lambda pair: _replaced(body, pair[0], pair[1])
    )
    return st.one_of(st.just(body), replaced)


@pytest.fixture(autouse=True, scope="module")
def _kombu_control_dir_outside_the_checkout() -> Any:
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(_DATA_DIR)
        yield


@schema.parametrize()
@BUDGET
def test_every_operation_answers_within_its_schema(case: schemathesis.Case) -> None:
    case.call_and_validate(headers=AUTH, checks=CHECKS)


@postgres_schema.parametrize()
@BUDGET
def test_every_operation_answers_within_its_schema_on_postgres(case: schemathesis.Case) -> None:
    if POSTGRES_ERROR is not None:
        services.service_unavailable("PostgreSQL", POSTGRES_ERROR)
    case.call_and_validate(headers=AUTH, checks=CHECKS)


@pytest.fixture(scope="module")
def uploads(model_file: Path, dataset_file: Path) -> dict[str, str]:
    """A real model and dataset, so that generated job specs can name them."""
    client = TestClient(APP, headers=AUTH)
    ids = {}
    for field, route, path in (
        ("model_id", "/v1/models", model_file),
        ("eval_dataset_id", "/v1/datasets", dataset_file),
    ):
        response = client.post(route, files={"file": (path.name, path.read_bytes())})
        assert response.status_code == 201, response.text
        ids[field] = response.json()["id"]
    return ids


def job_links() -> dict[str, str]:
    """The links the document declares from a created job: name -> operationId."""
    created = APP.openapi()["paths"]["/v1/jobs"]["post"]["responses"]["202"]
    return {name: link["operationId"] for name, link in created["links"].items()}


def test_a_created_job_followed_through_its_links_stays_within_the_schema(
    uploads: dict[str, str],
) -> None:
    """Generated job specs, made to name real uploads, are submitted; every link of a
    created job is followed with generated requests for the linked operation."""
    created: list[str] = []

    @given(data=st.data())
    @settings(BUDGET, max_examples=12)
    def walk(data: st.DataObject) -> None:
        submission = data.draw(schema["/v1/jobs"]["POST"].as_strategy())
        name_real_uploads(submission.body, uploads)
        response = submission.call(headers=AUTH)
        submission.validate_response(response, checks=CHECKS, headers=AUTH)
        if response.status_code != 202:
            return
        job_id = response.json()["id"]
        created.append(job_id)
        for operation_id in job_links().values():
            operation = schema.find_operation_by_id(operation_id)
            follow = data.draw(operation.as_strategy(path_parameters={"job_id": job_id}))
            followed = follow.call(headers=AUTH)
            follow.validate_response(followed, checks=CHECKS, headers=AUTH)
            assert followed.status_code != 404, f"{operation_id} lost job {job_id}"

    walk()
    # Not vacuous: some generated specs were valid jobs, so the links were walked.
    assert created, "no generated job spec was accepted; the links were never followed"


def name_real_uploads(body: object, uploads: dict[str, str]) -> None:
    if not isinstance(body, dict):
        return
    # Strings with NUL are refused before a spec is read (api.text_guard; the operation
    # tests above fuzz that): the walk needs specs that can be accepted.
    for path in list(_string_leaves(body)):
        body.update(_replaced(body, path, _get(body, path).replace("\x00", "")))
    body.update(uploads)
    # the other ways to name a model or data, and MLflow registration, need servers this
    # app has none of (MLflow; a webhook receiver): a spec with them is refused by design
    for field in ("calibration_dataset_id", "train_dataset_id", "model_uri", "registry"):
        body.pop(field, None)
    body.pop("webhook_url", None)
    if not body.get("steps") and not body.get("goal"):
        body["steps"] = [{"method": "quantize", "mode": "dynamic"}]
    task = body.get("task")
    if isinstance(task, dict):  # generated input/output names never match the model's
        task.pop("inputs", None)
        task.pop("output", None)


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        value = value[part]
    return value
