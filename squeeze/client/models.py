"""What the service answers, as typed objects.

Unknown fields are kept (`extra="allow"`), so a newer service's additions reach the
caller instead of breaking an older client. Job specs stay plain dicts: they are the
caller's input and the service validates them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})


class Wire(BaseModel):
    model_config = ConfigDict(extra="allow")


class Upload(Wire):
    id: str
    filename: str
    sha256: str
    size_bytes: int
    created_at: datetime
    info: dict[str, Any] = Field(default_factory=dict)
    # the upload's bytes were already stored: this is the earlier record (none was sent
    # again when the client found it by sha256 first)
    reused: bool = False


class Model(Upload):
    """An uploaded ONNX model; `info` holds opset, inputs, outputs, parameters, ..."""


class Dataset(Upload):
    """An uploaded `.npz`; `info` holds the arrays (shape, dtype) and the sample count."""


class ModelPage(Wire):
    items: list[Model]
    next_cursor: str | None = None


class DatasetPage(Wire):
    items: list[Dataset]
    next_cursor: str | None = None


class Latency(Wire):
    batch_size: int
    median_ms: float
    p95_ms: float
    runs: int


class Metrics(Wire):
    size_bytes: int
    parameters: int
    latency: list[Latency]
    metric_name: str
    metric_value: float
    metric_change: float = 0.0
    metric_rows: int | None = None

    def latency_at(self, batch_size: int) -> Latency | None:
        return next((item for item in self.latency if item.batch_size == batch_size), None)


class TargetCheck(Wire):
    target: str
    limit: float
    measured: float
    met: bool
    batch_size: int | None = None
    note: str | None = None


class StepResult(Wire):
    index: int
    method: str
    metrics: Metrics
    duration_s: float
    details: dict[str, Any] = Field(default_factory=dict)
    unchanged_reason: str | None = None
    metric_checks: list[TargetCheck] = Field(default_factory=list)


class SpeedAtBatch(Wire):
    batch_size: int
    threads: int | None = None
    ratio: float
    tolerance: float
    median_ms: float
    original_median_ms: float
    faster: bool
    slower: bool


class Verdict(Wire):
    targets_met: bool
    checks: list[TargetCheck]
    size_ratio: float
    latency_ratio: float
    metric_change: float
    # improved | unchanged | targets_missed (a verdict exists only for a success)
    outcome: str | None = None
    outcome_reason: str = ""
    speed: list[SpeedAtBatch] = Field(default_factory=list)
    metric_rows: int | None = None


class Note(Wire):
    code: str
    message: str


class Evaluation(Wire):
    rows: int
    selection_rows: int
    held_out_rows: int
    held_out_fraction: float
    seed: int
    split: bool
    note: str | None = None


class TargetResult(Wire):
    name: str
    runtime: str
    device: str
    sessions: list[str] = Field(default_factory=list)
    chosen: str
    chosen_reason: str = ""
    original: Metrics
    final: Metrics
    verdict: Verdict
    vs_onnxruntime: list[SpeedAtBatch] = Field(default_factory=list)
    candidates: list[dict[str, Any]] = Field(default_factory=list)
    artifacts: list[str] = Field(default_factory=list)


class JobResult(Wire):
    original: Metrics
    steps: list[StepResult]
    final: Metrics
    verdict: Verdict
    manifest: dict[str, Any] = Field(default_factory=dict)
    evaluation: Evaluation | None = None
    notes: list[Note] = Field(default_factory=list)
    targets: list[TargetResult] = Field(default_factory=list)


class JobError(Wire):
    code: str
    message: str


class Job(Wire):
    id: str
    state: str
    progress: float
    current_step: str | None = None
    attempt: int = 0
    cancel_requested: bool = False
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    spec: dict[str, Any]
    result: JobResult | None = None
    error: JobError | None = None
    links: dict[str, str] = Field(default_factory=dict)
    webhook_url: str | None = None
    batch_id: str | None = None
    # improved | unchanged | targets_missed | failed | cancelled, once final
    outcome: str | None = None
    outcome_reason: str | None = None
    # the worker queue it runs from (None from a service older than the field)
    queue: str | None = None

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def targets_met(self) -> bool | None:
        """The verdict once the job succeeded; None before, or when it did not succeed."""
        return None if self.result is None else self.result.verdict.targets_met


class JobPage(Wire):
    items: list[Job]
    next_cursor: str | None = None


class Event(Wire):
    id: int
    at: datetime
    attempt: int
    kind: str
    message: str
    data: dict[str, Any] = Field(default_factory=dict)


class EventPage(Wire):
    items: list[Event]
    next_after: int


class Artifact(Wire):
    name: str
    media_type: str
    size_bytes: int
    sha256: str
    url: str


class Quotas(Wire):
    storage_bytes: int
    concurrent_jobs: int


class Usage(Wire):
    storage_bytes: int
    active_jobs: int


class Tenant(Wire):
    id: str
    name: str
    created_at: datetime
    quotas: Quotas
    usage: Usage


class Account(Wire):
    key_id: str
    is_admin: bool
    tenant: Tenant


class ApiKey(Wire):
    id: str
    tenant_id: str
    name: str
    prefix: str
    is_admin: bool
    created_at: datetime
    revoked_at: datetime | None = None


class ApiKeyCreated(ApiKey):
    """A new key: `token` and `webhook_secret` are shown this once."""

    token: str
    webhook_secret: str


class WebhookSecret(Wire):
    key_id: str
    webhook_secret: str


class BatchJob(Wire):
    id: str
    model_id: str
    state: str
    progress: float
    current_step: str | None = None
    targets_met: bool | None = None
    outcome: str | None = None
    error: JobError | None = None
    url: str


class Batch(Wire):
    id: str
    created_at: datetime
    state: str
    total: int
    counts: dict[str, int]
    progress: float
    spec: dict[str, Any]
    webhook_url: str | None = None
    # present on a single batch's answer, absent in lists
    jobs: list[BatchJob] = Field(default_factory=list)

    @property
    def is_final(self) -> bool:
        return self.state == "finished"


class BatchPage(Wire):
    items: list[Batch]
    next_cursor: str | None = None
