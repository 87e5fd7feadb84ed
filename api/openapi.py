"""The OpenAPI document as the service really answers.

FastAPI documents request-validation errors as its own `HTTPValidationError`, but this
service answers every error as an `application/problem+json` Problem; the document is
corrected here, once, so generated clients and schema fuzzers see what they will get.
It also names operations after their functions (`get_job`, not a path-derived string)
and links a created job to the calls that follow it, which stateful fuzzing walks.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from api.problems import PROBLEM_MEDIA_TYPE

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
# Operations a created job's id leads to: link name -> operationId.
JOB_LINKS = {
    "GetJob": "get_job",
    "CancelJob": "cancel_job",
    "ListEvents": "list_events",
    "ListArtifacts": "list_artifacts",
    "GetJobReport": "get_job_report",
}


def operation_id(route: APIRoute) -> str:
    return route.name


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = corrected(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    summary=app.summary,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# Every operation that takes a body may answer these: a body that is not parseable (400)
# and one over the size cap enforced before any route runs (413).
BODY_ERRORS = {"400": "Bad Request", "413": "Content Too Large"}
# Every write operation under /v1 may answer these before any route runs (api/admission.py):
# a body that did not arrive in time (408) and the key's rate limit (429, Retry-After).
WRITE_ERRORS = {"408": "Request Timeout", "429": "Too Many Requests"}
WRITE_METHODS = {"post", "put", "patch", "delete"}


def corrected(document: dict[str, Any]) -> dict[str, Any]:
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            if "requestBody" in operation:
                for status, phrase in BODY_ERRORS.items():
                    responses.setdefault(status, {"description": phrase})
            # api.text_guard answers it on any operation (a control character in a query).
            responses.setdefault("422", {"description": "Unprocessable Content"})
            if method in WRITE_METHODS and path.startswith("/v1/"):
                for status, phrase in WRITE_ERRORS.items():
                    responses.setdefault(status, {"description": phrase})
            for status, response in responses.items():
                if int(status) >= 400:
                    response["content"] = {PROBLEM_MEDIA_TYPE: {"schema": PROBLEM_REF}}
        if path == "/v1/jobs" and "post" in operations:
            operations["post"]["responses"]["202"]["links"] = {
                name: {"operationId": target, "parameters": {"job_id": "$response.body#/id"}}
                for name, target in JOB_LINKS.items()
            }
    schemas = document.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return document
