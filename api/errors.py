"""Errors raised by the API's own service modules; each carries a stable `code`.

Their HTTP statuses live in one table in `api.problems`, next to the mapping of the
store's and the engine's errors.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class UnknownReference(ApiError):
    """A job spec names a model or dataset that was never uploaded."""

    def __init__(self, kind: str, item_id: str) -> None:
        super().__init__(f"no {kind} with id {item_id!r} was uploaded", code=f"unknown_{kind}")
        self.kind = kind
        self.item_id = item_id


class InvalidUpload(ApiError):
    """A multipart body this service cannot read: no `file` part, extra parts, bad syntax."""

    code = "invalid_upload"


class InvalidCharacters(ApiError):
    """A path, query or JSON string holding what no column can store (NUL, ...)."""

    code = "invalid_characters"


class UnsupportedMediaType(ApiError):
    code = "unsupported_media_type"


class PayloadTooLarge(ApiError):
    code = "payload_too_large"

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(f"the request body is larger than the limit of {limit_bytes} bytes")
        self.limit_bytes = limit_bytes


class BodyTimeout(ApiError):
    """The request body did not arrive in time (a slow or stalled client)."""

    code = "body_timeout"

    def __init__(self, timeout_s: float, *, idle: bool) -> None:
        what = (
            f"no body bytes arrived for {timeout_s:g} s"
            if idle
            else f"the request body did not arrive within {timeout_s:g} s"
        )
        super().__init__(f"{what}; send the body at once after the headers")
        self.timeout_s = timeout_s


class RateLimited(ApiError):
    """The key sent more write requests than its rate allows."""

    code = "rate_limited"

    def __init__(self, retry_after_s: int, *, rate_per_s: float, burst: int) -> None:
        super().__init__(
            f"this API key sent more than {burst} write requests at once or more than "
            f"{rate_per_s:g} a second; retry after {retry_after_s} s"
        )
        self.retry_after_s = retry_after_s
        self.rate_per_s = rate_per_s
        self.burst = burst

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}

    @property
    def extensions(self) -> dict[str, Any]:
        return {"retry_after_s": self.retry_after_s}


class NotReady(ApiError):
    """A dependency the service needs (database, broker) does not answer."""

    code = "not_ready"

    def __init__(self, checks: dict[str, str], outbox: dict[str, Any] | None = None) -> None:
        failing = sorted(name for name, status in checks.items() if status != "ok")
        super().__init__(f"not ready: {', '.join(failing)} failing")
        self.checks = checks
        # the job messages waiting for the broker (what an outage is holding back)
        self.outbox = outbox

    @property
    def extensions(self) -> dict[str, Any]:
        if self.outbox is None:
            return {"checks": self.checks}
        return {"checks": self.checks, "outbox": self.outbox}


class InvalidSpec(ApiError):
    """A job spec that passed its schema but cannot be stored (e.g. NaN or Infinity)."""

    code = "invalid_request"


class ForbiddenWebhook(InvalidSpec):
    """A webhook_url whose host is, or resolves to, a non-public address (SSRF)."""

    code = "webhook_destination_forbidden"

    def __init__(self, reason: str, *, field: str = "webhook_url") -> None:
        super().__init__(
            f"{field}: {reason}; webhooks go to public addresses only (an installation "
            "whose receivers share its network sets SQUEEZE_WEBHOOK_ALLOW_PRIVATE_HOSTS)"
        )
        self.field = field
        self.reason = reason

    @property
    def extensions(self) -> dict[str, Any]:
        error = {"loc": ["body", self.field], "msg": self.reason, "type": self.code}
        return {"field": self.field, "errors": [error]}


class Unauthenticated(ApiError):
    """No API key, or one this service does not know (or revoked)."""

    code = "unauthenticated"
    headers = {"WWW-Authenticate": "Bearer"}


class Forbidden(ApiError):
    code = "forbidden"


class QuotaExceeded(ApiError):
    """A tenant quota is reached; the client may retry after `retry_after_s`."""

    code = "quota_exceeded"

    def __init__(self, message: str, *, retry_after_s: int, quota: str) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.quota = quota

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}

    @property
    def extensions(self) -> dict[str, Any]:
        return {"quota": self.quota, "retry_after_s": self.retry_after_s}


class BatchTooLarge(ApiError):
    """A batch naming more models than `SQUEEZE_MAX_BATCH_JOBS`."""

    code = "batch_too_large"


class NoWorkerForTarget(ApiError):
    """No live worker consumes the job's queue with the device (and runtime) it needs."""

    code = "no_worker_for_target"

    def __init__(
        self,
        message: str,
        *,
        queue: str,
        device: str | None,
        runtime: str | None,
        available: list[dict[str, Any]],
    ) -> None:
        super().__init__(message)
        self.queue = queue
        self.device = device
        self.runtime = runtime
        self.available = available

    @property
    def extensions(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "device": self.device,
            "runtime": self.runtime,
            "available": self.available,
        }
