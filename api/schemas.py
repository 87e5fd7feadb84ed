"""Wire models: what clients send and receive. Rows (`store.tables`) are converted here,
at the edge, so the tables can change without changing the API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, Field, model_validator

from core.data import DatasetInfo
from core.formats import ModelInfo
from core.results import Outcome, PipelineResult
from core.spec import JobSpec, check_submission
from store import jobs
from store.tables import (
    AdminAuditRow,
    ApiKeyRow,
    ArtifactRow,
    DatasetRow,
    JobEventRow,
    JobRow,
    ModelRow,
)

# Mirrors store.jobs.STATES (a test keeps the two equal); a Literal documents the values.
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
# a job step's `method` (core.spec's step kinds), as listings filter by it
StepMethod = Literal["quantize", "prune", "distill", "search", "auto"]


def model_url(model_id: str) -> str:
    return f"/v1/models/{model_id}"


def dataset_url(dataset_id: str) -> str:
    return f"/v1/datasets/{dataset_id}"


def job_url(job_id: str) -> str:
    return f"/v1/jobs/{job_id}"


def artifact_url(job_id: str, name: str) -> str:
    return f"{job_url(job_id)}/artifacts/{name}"


class Problem(BaseModel):
    """An error (RFC 9457 problem details); `code` is stable, `detail` is for people."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="pydantic's error list, for invalid requests only"
    )


class ModelOut(BaseModel):
    id: str
    filename: str
    sha256: str
    size_bytes: int
    created_at: datetime
    info: ModelInfo
    # on an upload: true when the tenant had stored these bytes before and this is that
    # earlier record (answered 200, not 201); false everywhere else
    reused: bool = False

    @classmethod
    def from_row(cls, row: ModelRow, *, reused: bool = False) -> ModelOut:
        return cls(
            id=row.id,
            filename=row.filename,
            sha256=row.sha256,
            size_bytes=row.size_bytes,
            created_at=row.created_at,
            info=ModelInfo.model_validate(row.info),
            reused=reused,
        )


class DatasetOut(BaseModel):
    id: str
    filename: str
    sha256: str
    size_bytes: int
    created_at: datetime
    info: DatasetInfo
    # on an upload: true when the tenant had stored these bytes before and this is that
    # earlier record (answered 200, not 201); false everywhere else
    reused: bool = False

    @classmethod
    def from_row(cls, row: DatasetRow, *, reused: bool = False) -> DatasetOut:
        return cls(
            id=row.id,
            filename=row.filename,
            sha256=row.sha256,
            size_bytes=row.size_bytes,
            created_at=row.created_at,
            info=DatasetInfo.model_validate(row.info),
            reused=reused,
        )


class JobError(BaseModel):
    code: str
    message: str


class JobLinks(BaseModel):
    self: str
    events: str
    artifacts: str
    cancel: str


class JobOut(BaseModel):
    id: str
    state: JobState
    progress: float = Field(ge=0, le=1)
    current_step: str | None
    attempt: int
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    spec: JobSpec
    result: PipelineResult | None
    error: JobError | None
    links: JobLinks
    webhook_url: str | None = None
    batch_id: str | None = None
    # What the job came to once final (improved, unchanged, targets_missed, failed,
    # cancelled), and why in words; null while it runs.
    outcome: Outcome | None = None
    outcome_reason: str | None = None
    # the worker queue the job runs from (its device's: SQUEEZE_QUEUE_CPU or _GPU), so a
    # client can tell, with /readyz's live workers per queue, that nothing will run it
    queue: str | None = None

    @classmethod
    def from_row(cls, row: JobRow) -> JobOut:
        error = None
        if row.error_code is not None:
            error = JobError(code=row.error_code, message=row.error_message or row.error_code)
        url = job_url(row.id)
        return cls(
            id=row.id,
            state=row.state,  # type: ignore[arg-type]  # validated against JobState
            progress=row.progress,
            current_step=row.current_step,
            attempt=row.attempt,
            cancel_requested=row.cancel_requested,
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            spec=JobSpec.model_validate(row.spec),
            result=None if row.result is None else PipelineResult.model_validate(row.result),
            error=error,
            links=JobLinks(
                self=url,
                events=f"{url}/events",
                artifacts=f"{url}/artifacts",
                cancel=f"{url}/cancel",
            ),
            webhook_url=row.webhook_url,
            batch_id=row.batch_id,
            queue=row.queue,
            outcome=row.outcome,  # type: ignore[arg-type]  # validated against Outcome
            outcome_reason=jobs.outcome_reason(row),
        )


class JobList(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null at the end"
    )


class EventOut(BaseModel):
    id: int
    at: datetime
    attempt: int
    kind: str
    message: str
    data: dict[str, Any]

    @classmethod
    def from_row(cls, row: JobEventRow) -> EventOut:
        return cls(
            id=row.id,
            at=row.at,
            attempt=row.attempt,
            kind=row.kind,
            message=row.message,
            data=row.data,
        )


class EventList(BaseModel):
    items: list[EventOut]
    next_after: int = Field(description="pass as `after` to get only newer events")


class ArtifactOut(BaseModel):
    name: str
    media_type: str
    size_bytes: int
    sha256: str
    url: str

    @classmethod
    def from_row(cls, row: ArtifactRow) -> ArtifactOut:
        return cls(
            name=row.name,
            media_type=row.media_type,
            size_bytes=row.size_bytes,
            sha256=row.sha256,
            url=artifact_url(row.job_id, row.name),
        )


class ArtifactList(BaseModel):
    items: list[ArtifactOut]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class OutboxBacklog(BaseModel):
    pending: int
    oldest_age_s: float | None = None


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    checks: dict[str, str]
    # live workers consuming each of the service's queues, and what is unserved
    workers: dict[str, int] = {}
    warnings: list[str] = []
    # job messages not yet taken by the broker (the outbox) and the oldest one's age
    outbox: OutboxBacklog | None = None



# --- tenants and API keys -------------------------------------------------------------


class TenantIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    # None: the service's default quota; 0: nothing (a tenant that may not store or run).
    # Bounded by the database column (BigInteger), not by policy.
    quota_storage_bytes: int | None = Field(default=None, ge=0, le=2**62)
    quota_concurrent_jobs: int | None = Field(default=None, ge=0, le=100_000)


class Usage(BaseModel):
    storage_bytes: int
    active_jobs: int


class QuotasOut(BaseModel):
    storage_bytes: int
    concurrent_jobs: int


class TenantOut(BaseModel):
    id: str
    name: str
    created_at: datetime
    quotas: QuotasOut
    usage: Usage


class AccountOut(BaseModel):
    """The caller: its key and its tenant's quotas and usage."""

    key_id: str
    is_admin: bool
    tenant: TenantOut


class ApiKeyIn(BaseModel):
    name: str = Field(default="api key", min_length=1, max_length=200)


class ApiKeyOut(BaseModel):
    id: str
    tenant_id: str
    name: str
    prefix: str = Field(description="the key's first characters, to recognise it")
    is_admin: bool
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def from_row(cls, row: ApiKeyRow) -> ApiKeyOut:
        return cls(
            id=row.id,
            tenant_id=row.tenant_id,
            name=row.name,
            prefix=row.prefix,
            is_admin=row.is_admin,
            created_at=row.created_at,
            revoked_at=row.revoked_at,
        )


class ApiKeyCreated(ApiKeyOut):
    token: str = Field(description="the key itself: shown this once, stored only hashed")
    webhook_secret: str = Field(
        description="signs the webhooks of jobs this key submits (HMAC-SHA256); shown "
        "here and on rotation only"
    )


class AuditEntryOut(BaseModel):
    id: str
    created_at: datetime
    actor_key_id: str | None = Field(description="the key that acted; null: the service")
    action: str
    target_kind: str
    target_id: str
    tenant_id: str | None
    details: dict[str, Any]

    @classmethod
    def from_row(cls, row: AdminAuditRow) -> AuditEntryOut:
        return cls(
            id=row.id,
            created_at=row.created_at,
            actor_key_id=row.actor_key_id,
            action=row.action,
            target_kind=row.target_kind,
            target_id=row.target_id,
            tenant_id=row.tenant_id,
            details=row.details,
        )


class AuditList(BaseModel):
    items: list[AuditEntryOut]
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null at the end"
    )


class WebhookSecretOut(BaseModel):
    key_id: str
    webhook_secret: str = Field(description="the new secret: shown this once")


# --- webhooks -------------------------------------------------------------------------


def check_webhook_url(url: str) -> str:
    """An absolute http(s) URL with a host, no credentials, no whitespace."""
    if any(char.isspace() or ord(char) < 32 for char in url):
        raise ValueError("the webhook URL holds whitespace or control characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("the webhook URL must be an absolute http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError("the webhook URL must not carry credentials (put a token in the path)")
    _ = parts.port  # raises ValueError for a port that is not a number in range
    return url


WebhookUrl = Annotated[str, Field(min_length=1, max_length=2000), AfterValidator(check_webhook_url)]


class JobRequest(JobSpec):
    """A job spec, plus where to POST the job's record once it is final."""

    webhook_url: WebhookUrl | None = Field(
        default=None,
        description="POSTed the job record when the job ends, signed with the submitting "
        "key's webhook secret (header `Squeeze-Signature`)",
    )

    @model_validator(mode="after")
    def _follows_the_submission_rules(self) -> JobRequest:
        check_submission(self)
        return self

    def job_spec(self) -> JobSpec:
        return JobSpec.model_validate(self.model_dump(exclude={"webhook_url"}))


class ApiKeyList(BaseModel):
    items: list[ApiKeyOut]
