"""Every error as `application/problem+json` (RFC 9457), mapped from exception types once.

A problem is {type, title, status, detail, code}, plus `errors` for invalid requests and
any extension a specific error carries (readiness checks). `code` is the stable,
machine-readable part; `detail` is for people and may change.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from api.errors import (
    ApiError,
    BatchTooLarge,
    BodyTimeout,
    Forbidden,
    ForbiddenWebhook,
    InvalidCharacters,
    InvalidSpec,
    InvalidUpload,
    NotReady,
    NoWorkerForTarget,
    PayloadTooLarge,
    QuotaExceeded,
    RateLimited,
    Unauthenticated,
    UnknownReference,
    UnsupportedMediaType,
)
from core.errors import IncompatibleData, InputError, InvalidDataset, InvalidModel
from core.spec_errors import UserError, describe, describe_all
from store.blobs import BlobMissing, BlobTooLarge
from store.catalog import NotFound
from store.jobs import IdempotencyConflict, InvalidCursor, JobAlreadyFinal, JobNotFound
from store.lifecycle import InUse, JobActive

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"


def problem_type(code: str) -> str:
    return f"urn:squeeze:problem:{code}"


def problem_response(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": problem_type(code),
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        **json_safe(extensions),
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


@dataclass(frozen=True)
class Rule:
    status: int
    title: str
    # None: the exception's own `code` attribute (engine and API errors carry one).
    code: str | None = None
    detail: Callable[[Exception], str] = str


def _job_not_found(exc: Exception) -> str:
    return f"job {exc.args[0]!r} does not exist" if exc.args else "no such job"


def _blob_too_large(exc: Exception) -> str:
    assert isinstance(exc, BlobTooLarge)
    return f"the uploaded file is larger than the limit of {exc.limit_bytes} bytes"


# The one place where an error type becomes an HTTP status. The most specific class wins.
RULES: dict[type[Exception], Rule] = {
    InputError: Rule(422, "Unusable input"),
    InvalidModel: Rule(422, "Invalid model"),
    InvalidDataset: Rule(422, "Invalid dataset"),
    IncompatibleData: Rule(422, "Dataset does not fit the model", "incompatible_data"),
    ApiError: Rule(400, "Bad request"),
    UnknownReference: Rule(422, "Unknown reference"),
    InvalidSpec: Rule(422, "Invalid request"),
    ForbiddenWebhook: Rule(422, "Forbidden webhook destination"),
    InvalidUpload: Rule(422, "Invalid upload"),
    InvalidCharacters: Rule(422, "Invalid characters"),
    NotFound: Rule(404, "Not found", "not_found"),
    JobNotFound: Rule(404, "Not found", "not_found", _job_not_found),
    IdempotencyConflict: Rule(
        409,
        "Idempotency key reused",
        "idempotency_conflict",
        lambda exc: (
            f"the Idempotency-Key {str(exc)!r} was used before with a different request body"
        ),
    ),
    JobAlreadyFinal: Rule(409, "Job already final", "job_already_final"),
    InUse: Rule(409, "Still in use", "in_use"),
    JobActive: Rule(409, "Job not ended", "job_active"),
    BlobTooLarge: Rule(413, "Payload too large", "payload_too_large", _blob_too_large),
    BlobMissing: Rule(
        404,
        "Not found",
        "blob_missing",
        lambda exc: "the file's bytes are no longer stored (removed by retention or deleted)",
    ),
    PayloadTooLarge: Rule(413, "Payload too large"),
    UnsupportedMediaType: Rule(415, "Unsupported media type"),
    InvalidCursor: Rule(400, "Invalid cursor", "invalid_cursor"),
    NotReady: Rule(503, "Not ready"),
    Unauthenticated: Rule(401, "Unauthenticated"),
    Forbidden: Rule(403, "Forbidden"),
    QuotaExceeded: Rule(429, "Quota exceeded"),
    RateLimited: Rule(429, "Too many requests"),
    BodyTimeout: Rule(408, "Request timeout"),
    BatchTooLarge: Rule(422, "Batch too large"),
    NoWorkerForTarget: Rule(422, "No worker for the job"),
    # Nobody reads this answer; mapping it keeps a dropped upload out of the error log.
    ClientDisconnect: Rule(400, "Client disconnected", "client_disconnected"),
}

# Codes for the framework's own HTTP errors (unknown route, wrong method, ...).
HTTP_STATUS_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def rule_for(exc: Exception) -> Rule | None:
    for cls in type(exc).__mro__:
        rule = RULES.get(cls)
        if rule is not None:
            return rule
    return None


def response_for(exc: Exception) -> JSONResponse:
    """The problem response for a mapped error; 500 for anything else."""
    rule = rule_for(exc)
    if rule is None:
        return internal_error_response()
    code = rule.code or str(getattr(exc, "code", "error"))
    extensions = getattr(exc, "extensions", {})
    headers = getattr(exc, "headers", None)
    return problem_response(
        rule.status, code, rule.title, rule.detail(exc), headers=headers, **extensions
    )


def internal_error_response() -> JSONResponse:
    return problem_response(
        500, "internal_error", "Internal error", "the service failed; the error was logged"
    )


def json_safe(value: Any) -> Any:
    """Pydantic error lists hold exceptions, bytes and non-finite floats: make them JSON."""
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if value is None or isinstance(value, str | int | bool):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


# Where a request's parts are, in words, for errors outside the JSON body.
_PARTS = {"query": "query parameter", "path": "path parameter", "header": "header"}


def _body_type(request: Request) -> Any:
    """The type the route validates its JSON body as (a job spec, a batch), if one."""
    field = getattr(request.scope.get("route"), "body_field", None)
    info = getattr(field, "field_info", None)
    return getattr(info, "annotation", None)


def _root_name(body_type: Any) -> str:
    name = getattr(body_type, "__name__", "")
    return {"JobRequest": "the job spec", "BatchIn": "the batch"}.get(name, "the request body")


def _in_words(
    request: Request, exc: RequestValidationError
) -> tuple[list[UserError], list[dict[str, Any]]]:
    """The sentences for the detail (a union's errors merged into one), and each error
    with its own: body errors by the JSON path the user wrote (core.spec_errors), the
    others by the part of the request they are in."""
    body_type = _body_type(request)
    root_name = _root_name(body_type)
    body_errors: list[dict[str, Any]] = []
    sentences: list[UserError] = []
    errors: list[dict[str, Any]] = []
    for error in exc.errors():
        where, *rest = tuple(error.get("loc", ())) or ("body",)
        relative = {**error, "loc": tuple(rest)}
        if where == "body":
            body_errors.append(relative)
            found = _sentence(relative, exc.body, body_type, root_name)
        else:
            found = _sentence(relative, None, None, root_name)
            part = f"{_PARTS.get(str(where), str(where))} `{found.path}`"
            found = UserError(found.path, found.message.replace(f"`{found.path}`", part, 1))
            sentences.append(found)
        # `msg` becomes the sentence; `loc` and `type` stay for programs. The
        # documentation URL pydantic adds to each error is noise on the wire.
        kept = {key: item for key, item in error.items() if key not in ("url", "ctx")}
        errors.append(json_safe({**kept, "msg": found.message, "path": found.path}))
    try:
        sentences += describe_all(body_errors, exc.body, body_type, root_name=root_name)
    except Exception:  # a wording bug must not turn a 422 into a 500
        logger.exception("describing validation errors failed")
        sentences += [_sentence(error, None, None, root_name) for error in body_errors]
    return sentences, errors


def _sentence(error: dict[str, Any], document: Any, body_type: Any, root_name: str) -> UserError:
    try:
        return describe(error, document, body_type, root_name=root_name)
    except Exception:  # a wording bug must not turn a 422 into a 500
        logger.exception("describing a validation error failed")
        loc = ".".join(str(part) for part in error.get("loc", ()))
        message = str(error.get("msg", "invalid"))
        return UserError(loc, f"{loc}: {message}" if loc else message)


async def _on_known_error(request: Request, exc: Exception) -> JSONResponse:
    return response_for(exc)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    sentences, errors = _in_words(request, exc)
    detail = "; ".join(found.message for found in sentences[:3])
    if len(sentences) > 3:
        detail += f"; and {len(sentences) - 3} more"
    return problem_response(
        422, "invalid_request", "Invalid request", detail or "invalid request", errors=errors
    )


async def _on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    phrase = HTTPStatus(exc.status_code).phrase
    code = HTTP_STATUS_CODES.get(exc.status_code, f"http_{exc.status_code}")
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail else phrase
    if exc.status_code == 404 and detail == phrase:
        detail = f"no route {request.url.path}"
    return problem_response(exc.status_code, code, phrase, detail, headers=exc.headers)


async def _on_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return internal_error_response()


def install_problem_handlers(app: FastAPI) -> None:
    for exc_type in RULES:
        app.add_exception_handler(exc_type, _on_known_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(Exception, _on_unexpected_error)
