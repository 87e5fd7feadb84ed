"""A job's record as JSON, as `GET /v1/jobs/{id}` answers it: the body of its webhook.

The worker never imports the web layer, so the record is built here from the row;
tests/api/test_webhooks.py checks that it stays equal to the API's `JobOut`.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from store.jobs import outcome_reason
from store.tables import JobRow


def _time(value: datetime | None) -> str | None:
    # pydantic's rendering of an aware UTC datetime, which the API uses
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def job_record(job: JobRow) -> dict[str, Any]:
    url = f"/v1/jobs/{job.id}"
    error = None
    if job.error_code is not None:
        error = {"code": job.error_code, "message": job.error_message or job.error_code}
    return {
        "id": job.id,
        "state": job.state,
        "progress": job.progress,
        "current_step": job.current_step,
        "attempt": job.attempt,
        "cancel_requested": job.cancel_requested,
        "created_at": _time(job.created_at),
        "started_at": _time(job.started_at),
        "finished_at": _time(job.finished_at),
        "spec": job.spec,
        "result": job.result,
        "error": error,
        "links": {
            "self": url,
            "events": f"{url}/events",
            "artifacts": f"{url}/artifacts",
            "cancel": f"{url}/cancel",
        },
        "webhook_url": job.webhook_url,
        "batch_id": job.batch_id,
        "outcome": job.outcome,
        "outcome_reason": outcome_reason(job),
        "queue": job.queue,
    }


def job_record_bytes(job: JobRow) -> bytes:
    """The record as compact JSON bytes: exactly what is signed and sent."""
    return json.dumps(job_record(job), separators=(",", ":")).encode()
