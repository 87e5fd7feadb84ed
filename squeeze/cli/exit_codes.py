"""The CLI's exit codes (documented in the README and in `squeeze --help`)."""

from __future__ import annotations

from squeeze.client.models import Batch, Job

OK = 0  # success; for a job: it succeeded and met its targets (or is still running)
JOB_FAILED = 1  # the job (or a job of the batch) failed or was cancelled
ERROR = 2  # usage error, API error, service unreachable
TARGETS_MISSED = 3  # the job succeeded but missed a target (see `squeeze report`)
INTERRUPTED = 130  # Ctrl-C while watching (the job goes on)

EPILOG = """exit codes: 0 success (job succeeded with its targets met, or is not final yet),
1 job failed or cancelled, 2 usage or API error, 3 job succeeded but missed a target,
130 interrupted while watching (the job goes on)"""


def for_job(job: Job) -> int:
    if job.state in ("failed", "cancelled"):
        return JOB_FAILED
    if job.state == "succeeded" and job.targets_met is False:
        return TARGETS_MISSED
    return OK


def for_batch(batch: Batch) -> int:
    if any(job.state in ("failed", "cancelled") for job in batch.jobs):
        return JOB_FAILED
    if any(job.state == "succeeded" and job.targets_met is False for job in batch.jobs):
        return TARGETS_MISSED
    return OK
