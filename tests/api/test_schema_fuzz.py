"""Schema fuzzing with schemathesis over the OpenAPI document, with a fixed budget.

Every operation is called with generated requests (as the admin; tests/api/test_tenants.py
checks that every operation refuses anonymous callers), then stateful sequences follow
the document's links from creating a job to reading, cancelling and listing it. The
service must answer no 5xx and every response must match the document: status, content
type, headers and body schema.
"""

from __future__ import annotations

import tempfile
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
APP = create_app(
    Settings(
        data_dir=_DATA_DIR,
        admin_api_key=ADMIN_TOKEN,
        absent_worker_policy="off",  # no worker runs here
        # Small caps: fuzzed uploads stay cheap.
        max_model_bytes=2_000_000,
        max_dataset_bytes=2_000_000,
        # The fuzzer writes faster than any client should: a rate limit would answer most
        # of its calls 429 before they reach the routes under test.
        rate_limit_per_s=0,
    )
)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.fixture(autouse=True, scope="module")
def _kombu_control_dir_outside_the_checkout() -> Any:
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(_DATA_DIR)
        yield


@schema.parametrize()
@BUDGET
def test_every_operation_answers_within_its_schema(case: schemathesis.Case) -> None:
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
    body.update(uploads)
    for role in ("calibration_dataset_id", "train_dataset_id"):
        body.pop(role, None)
    task = body.get("task")
    if isinstance(task, dict):  # generated input/output names never match the model's
        task.pop("inputs", None)
        task.pop("output", None)
