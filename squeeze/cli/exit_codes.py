"""The CLI's exit codes (documented in the README and in `squeeze --help`).

A CI gate acts on them: 0 only when the job delivered (smaller and/or faster, every target
met), distinct codes for a result that missed a target and one that changed nothing.
"""

from __future__ import annotations

from squeeze.client.models import Batch, BatchJob, Job

OK = 0  # the job improved the model with its targets met (or is not final yet)
JOB_FAILED = 1  # the job (or a job of the batch) failed or was cancelled
ERROR = 2  # usage error, API error, service unreachable
TARGETS_MISSED = 3  # the job succeeded but missed a target (see `squeeze report`)
UNCHANGED = 4  # the job succeeded but its result is the input, or nothing measurable changed
INTERRUPTED = 130  # Ctrl-C while watching (the job goes on)

EPILOG = """exit codes: 0 improved (smaller and/or faster, targets met; or not final yet),
1 job failed or cancelled, 2 usage or API error, 3 succeeded but missed a target,
4 succeeded but unchanged (the result is the input, or nothing measurable changed),
130 interrupted while watching (the job goes on)"""

_BY_OUTCOME = {
    "improved": OK,
    "unchanged": UNCHANGED,
    "targets_missed": TARGETS_MISSED,
    "failed": JOB_FAILED,
    "cancelled": JOB_FAILED,
}


def for_outcome(state: str, outcome: str | None, targets_met: bool | None) -> int:
    if state in ("failed", "cancelled"):
        return JOB_FAILED
    if state != "succeeded":
        return OK
    if outcome in _BY_OUTCOME:
        return _BY_OUTCOME[outcome]
    # a service from before outcomes: only the verdict's targets_met
    return TARGETS_MISSED if targets_met is False else OK


def for_job(job: Job) -> int:
    return for_outcome(job.state, job.outcome, job.targets_met)


def _for_batch_job(job: BatchJob) -> int:
    return for_outcome(job.state, job.outcome, job.targets_met)


def for_batch(batch: Batch) -> int:
    """The worst of its jobs: failed, then missed, then unchanged."""
    codes = {_for_batch_job(job) for job in batch.jobs}
    for code in (JOB_FAILED, TARGETS_MISSED, UNCHANGED):
        if code in codes:
            return code
    return OK
