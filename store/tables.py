"""Database tables. Wire schemas live in `api/schemas.py`; these describe rows only."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on both databases (SQLite would otherwise hand back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return None if value is None else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {
        dict[str, Any]: JSON,
        list[str]: JSON,
        list[dict[str, Any]]: JSON,
        datetime: UTCDateTime(),
    }


class TenantRow(Base):
    """An account: every model, dataset and job belongs to exactly one tenant."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # None: the service's default quota (settings).
    quota_storage_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    quota_concurrent_jobs: Mapped[int | None] = mapped_column(Integer, default=None)
    # Bumped by every job submission: the UPDATE takes the row's write lock, so two
    # concurrent submissions of one tenant count its active jobs one after the other.
    submissions: Mapped[int] = mapped_column(Integer, default=0)


class ApiKeyRow(Base):
    """An API key, stored as the sha256 of its secret (the secret is shown once)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    # The token's first characters, to recognise a key in lists without revealing it.
    prefix: Mapped[str] = mapped_column(String(16))
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    # Signs the webhooks of the jobs this key submits (HMAC-SHA256). Stored as it is, not
    # hashed, because the service must sign with it; shown at creation and rotation only.
    webhook_secret: Mapped[str] = mapped_column(String(64))


class AdminAuditRow(Base):
    """One admin action on tenants or API keys: who (the acting key; None for the
    service itself, as when the configured admin key is rotated at start), what, on which
    row. Never updated or deleted by the service."""

    __tablename__ = "admin_audit"
    __table_args__ = (Index("ix_admin_audit_created", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    actor_key_id: Mapped[str | None] = mapped_column(String(40), default=None)
    # tenant.created, api_key.created, api_key.revoked, api_key.webhook_secret_rotated,
    # admin_key.rotated
    action: Mapped[str] = mapped_column(String(64))
    target_kind: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str] = mapped_column(String(64))
    # the tenant the target belongs to
    tenant_id: Mapped[str | None] = mapped_column(String(40), default=None)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class ModelRow(Base):
    __tablename__ = "models"
    __table_args__ = (Index("ix_models_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", name="fk_models_tenant_id"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    filename: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    info: Mapped[dict[str, Any]]


class DatasetRow(Base):
    __tablename__ = "datasets"
    __table_args__ = (Index("ix_datasets_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", name="fk_datasets_tenant_id"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    filename: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    info: Mapped[dict[str, Any]]


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_state_created", "state", "created_at"),
        Index("ix_jobs_tenant_created", "tenant_id", "created_at"),
        Index("ix_jobs_tenant_outcome", "tenant_id", "outcome"),
        # Idempotency keys are the client's: two tenants may pick the same one.
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", name="fk_jobs_tenant_id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    state: Mapped[str] = mapped_column(String(16), default="queued")
    spec: Mapped[dict[str, Any]]
    queue: Mapped[str] = mapped_column(String(64))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    current_step: Mapped[str | None] = mapped_column(String(200), default=None)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), default=None)
    request_sha256: Mapped[str] = mapped_column(String(64))
    # Fencing: every claim increments `attempt`; writes from an older attempt are refused,
    # so a worker that lost its lease cannot overwrite the attempt that replaced it.
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    worker: Mapped[str | None] = mapped_column(String(200), default=None)
    enqueued_at: Mapped[datetime | None] = mapped_column(default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    # The key that submitted the job: its webhook secret signs the job's webhook.
    api_key_id: Mapped[str | None] = mapped_column(
        ForeignKey("api_keys.id", name="fk_jobs_api_key_id"), default=None
    )
    webhook_url: Mapped[str | None] = mapped_column(String(2000), default=None)
    batch_id: Mapped[str | None] = mapped_column(
        ForeignKey("batches.id", name="fk_jobs_batch_id"), default=None, index=True
    )
    # The steps' methods joined by "+" ("prune+quantize"): the label of job metrics.
    method: Mapped[str | None] = mapped_column(String(200), default=None)
    # What a final job came to (core.results.Outcome: improved, unchanged,
    # targets_missed, failed, cancelled); None while it runs, and for successes recorded
    # before outcomes existed.
    outcome: Mapped[str | None] = mapped_column(String(20), default=None)
    # Messages the reaper sent again for this queued job since it was last claimed or
    # requeued (bounded: settings.max_resends, then the job fails "never_claimed").
    resends: Mapped[int] = mapped_column(Integer, default=0)


class BatchRow(Base):
    """One spec submitted over many models: one job per model (`jobs.batch_id`)."""

    __tablename__ = "batches"
    __table_args__ = (
        Index("ix_batches_tenant_created", "tenant_id", "created_at"),
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_batches_tenant_idempotency_key"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", name="fk_batches_tenant_id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The job spec every job shares, without its model_id.
    spec: Mapped[dict[str, Any]]
    webhook_url: Mapped[str | None] = mapped_column(String(2000), default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), default=None)
    request_sha256: Mapped[str] = mapped_column(String(64))


class WebhookDeliveryRow(Base):
    """The webhook of one job: written with the job ("waiting"), due once the job is
    final ("pending"), then "delivered" or, after the last attempt, "failed"."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("job_id", name="uq_webhook_deliveries_job_id"),
        Index("ix_webhook_deliveries_state_due", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2000))
    state: Mapped[str] = mapped_column(String(16), default="waiting")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=None)
    last_status: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)


class JobEventRow(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class JobOutboxRow(Base):
    """A message to the broker written in the transaction that queued the job (the
    transactional outbox): a row here is a run_job message not yet handed to the broker.
    The row goes once the broker took the message (store.outbox.drain)."""

    __tablename__ = "job_outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    queue: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # failed sends so far, and why the last one failed (the broker's error, in words)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    last_attempt_at: Mapped[datetime | None] = mapped_column(default=None)


class ArtifactRow(Base):
    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "name", name="uq_artifacts_job_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    media_type: Mapped[str] = mapped_column(String(100))
    # indexed: a delete asks whether any other row still names the same blob
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WorkerRow(Base):
    """A worker process that said what it can do; it beats `heartbeat_at` from its parent.

    One row per start (`id` is new each time): a worker whose beats stopped longer ago
    than `settings.worker_dead_after_s` counts as dead, and its row is deleted after
    `settings.worker_forget_after_s`; a clean shutdown sets `stopped_at`.
    """

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))  # the Celery node name
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    queues: Mapped[list[str]] = mapped_column(JSON)
    concurrency: Mapped[int] = mapped_column(Integer, default=1)
    # runtime name -> devices it offers here: {"onnxruntime": ["cpu", "cuda"], ...}
    runtimes: Mapped[dict[str, Any]] = mapped_column(JSON)
    devices: Mapped[list[str]] = mapped_column(JSON)
    gpus: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    version: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    stopped_at: Mapped[datetime | None] = mapped_column(default=None)
    # tasks running at the last beat (a queue whose live workers are all busy is waiting
    # its turn, and the reaper neither re-sends its jobs nor counts them)
    active: Mapped[int] = mapped_column(Integer, default=0)


class RecipeRunRow(Base):
    """An auto recipe of a job (core.recipe): when its first attempt began, which its
    time budget counts from whatever attempt runs it."""

    __tablename__ = "recipe_runs"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    recipe: Mapped[str] = mapped_column(String(64), primary_key=True)
    first_attempt: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)


class RecipeCandidateRow(Base):
    """A finished candidate of a job's auto recipe, kept so that a new attempt of the job
    resumes the recipe (worker.recipe_candidates). `key` is the candidate's stage,
    proposal and base lineage; its model (and float model) are blobs, named here so that
    no garbage collection takes them while the row exists."""

    __tablename__ = "recipe_candidates"
    __table_args__ = (UniqueConstraint("job_id", "recipe", "key", name="uq_recipe_candidates_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    recipe: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(1000))
    # "done" (measured) or "failed" (note says why)
    state: Mapped[str] = mapped_column(String(16))
    attempt: Mapped[int] = mapped_column(Integer)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    measurement: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    note: Mapped[str | None] = mapped_column(Text, default=None)
    # "model.onnx" (one file) or "model.zip" (the .onnx and its external data)
    model_file: Mapped[str | None] = mapped_column(String(32), default=None)
    sha256: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    float_model_file: Mapped[str | None] = mapped_column(String(32), default=None)
    float_sha256: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    # the helper that produced it (AutoStep.parallel_workers); None: the job's runner
    measured_by: Mapped[str | None] = mapped_column(String(200), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RecipeClaimRow(Base):
    """Who produces a candidate of a fanned-out recipe now: one claim per candidate, held
    while `expires_at` is renewed by its holder's worker (a dead holder's claim lapses and
    another takes it over)."""

    __tablename__ = "recipe_claims"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    recipe: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(1000), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime] = mapped_column(default=utcnow)
