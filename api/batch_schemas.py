"""Wire models of batches: one job spec submitted over many models."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from api.schemas import JobError, JobState, WebhookUrl, job_url
from core.results import Outcome
from core.spec import JobSpec, check_submission
from store.batches import BatchCounts
from store.tables import BatchRow, JobRow

ModelId = Annotated[str, Field(min_length=1, max_length=64)]


def batch_url(batch_id: str) -> str:
    return f"/v1/batches/{batch_id}"


class JobTemplate(JobSpec):
    """A job spec without its model: each of the batch's `model_ids` fills it in."""

    model_id: str = Field(
        default="", max_length=0, description="leave out: the batch's model_ids fill it in"
    )

    @model_validator(mode="after")
    def _follows_the_submission_rules(self) -> JobTemplate:
        if self.model_uri is not None:
            raise ValueError(
                "a batch's models are its model_ids: leave model_uri out of the spec "
                "(submit an MLflow model as a job of its own)"
            )
        check_submission(self)
        return self


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_ids: list[ModelId] = Field(
        min_length=1,
        max_length=1000,
        description="one job per model, in this order (at most SQUEEZE_MAX_BATCH_JOBS)",
    )
    spec: JobTemplate
    webhook_url: WebhookUrl | None = Field(
        default=None, description="every job of the batch POSTs its record here when it ends"
    )

    @field_validator("model_ids")
    @classmethod
    def _distinct(cls, model_ids: list[str]) -> list[str]:
        if len(set(model_ids)) != len(model_ids):
            raise ValueError("a model may appear once in a batch")
        return model_ids

    def job_specs(self) -> list[JobSpec]:
        template = self.spec.model_dump(mode="json")
        return [JobSpec.model_validate({**template, "model_id": m}) for m in self.model_ids]

    def template(self) -> dict[str, Any]:
        """The shared spec as stored with the batch (no model_id)."""
        template = self.spec.model_dump(mode="json")
        template.pop("model_id", None)
        return template


class BatchJob(BaseModel):
    """One job of a batch, in short; its full record is at `url`."""

    id: str
    model_id: str
    state: JobState
    progress: float
    current_step: str | None
    targets_met: bool | None = Field(description="the verdict, once the job succeeded")
    outcome: Outcome | None = Field(
        default=None, description="what the job came to, once final (see GET /v1/jobs/{id})"
    )
    error: JobError | None
    url: str

    @classmethod
    def from_row(cls, row: JobRow) -> BatchJob:
        verdict = (row.result or {}).get("verdict") or {}
        error = None
        if row.error_code is not None:
            error = JobError(code=row.error_code, message=row.error_message or row.error_code)
        return cls(
            id=row.id,
            model_id=str(row.spec.get("model_id", "")),
            state=row.state,  # type: ignore[arg-type]  # validated against JobState
            progress=row.progress,
            current_step=row.current_step,
            targets_met=verdict.get("targets_met"),
            outcome=row.outcome,  # type: ignore[arg-type]  # validated against Outcome
            error=error,
            url=job_url(row.id),
        )


class BatchOut(BaseModel):
    id: str
    created_at: datetime
    state: Literal["active", "finished"] = Field(
        description="active while any job is queued or running"
    )
    total: int
    counts: dict[str, int] = Field(description="jobs per state")
    progress: float = Field(ge=0, le=1, description="the mean progress of its jobs")
    spec: dict[str, Any] = Field(description="the spec every job shares (without model_id)")
    webhook_url: str | None

    @classmethod
    def from_row(cls, row: BatchRow, counts: BatchCounts) -> BatchOut:
        active = counts.by_state.get("queued", 0) + counts.by_state.get("running", 0)
        return cls(
            id=row.id,
            created_at=row.created_at,
            state="active" if active else "finished",
            total=counts.total,
            counts=counts.by_state,
            progress=min(counts.progress_sum / counts.total, 1.0) if counts.total else 0.0,
            spec=row.spec,
            webhook_url=row.webhook_url,
        )


class BatchDetail(BatchOut):
    jobs: list[BatchJob]


class BatchList(BaseModel):
    items: list[BatchOut]
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null at the end"
    )
