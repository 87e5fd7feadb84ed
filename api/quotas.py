"""Per-tenant quotas: storage bytes and concurrent (queued or running) jobs.

A tenant row may set its own limits (0 included: nothing allowed); a row without one
(NULL) gets the service's defaults. Reaching a quota is a 429 with `Retry-After`: both
limits free up as jobs finish or data expires.

`concurrent_jobs` counts workers, not rows: a search or auto step with `parallel_workers`
P occupies P workers while it runs (its own and P - 1 `squeeze.search_trials` helpers),
so it takes P slots. A job that needs more slots than the whole quota is a 422 naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from api.errors import InvalidSpec, QuotaExceeded
from core.spec import AutoStep, JobSpec, SearchStep
from service.settings import Settings
from store import tenants

# the steps whose `parallel_workers` occupy helpers on other workers
FAN_OUT_STEPS = (SearchStep, AutoStep)


@dataclass(frozen=True)
class Quotas:
    storage_bytes: int
    concurrent_jobs: int

    @classmethod
    def of(cls, session: Session, tenant_id: str, settings: Settings) -> Quotas:
        tenant = tenants.get_tenant(session, tenant_id)
        # `is None`, not `or`: a quota of 0 is a tenant allowed nothing, not the default
        return cls(
            storage_bytes=settings.quota_storage_bytes
            if tenant.quota_storage_bytes is None
            else tenant.quota_storage_bytes,
            concurrent_jobs=settings.quota_concurrent_jobs
            if tenant.quota_concurrent_jobs is None
            else tenant.quota_concurrent_jobs,
        )


def storage_left(session: Session, tenant_id: str, settings: Settings) -> int:
    """Bytes the tenant may still store; QuotaExceeded when nothing is left."""
    quota = Quotas.of(session, tenant_id, settings).storage_bytes
    left = quota - tenants.storage_bytes(session, tenant_id)
    if left <= 0:
        raise storage_exceeded(quota, settings)
    return left


def reserve_storage(session: Session, tenant_id: str, settings: Settings, size_bytes: int) -> None:
    """Check, under the tenant's lock, that `size_bytes` more still fit its storage quota;
    QuotaExceeded otherwise. Call it right before inserting the row that stores them: the
    lock is held until the transaction ends, so concurrent uploads of one tenant are
    counted one after another (each sees the rows the others committed) and cannot each
    spend the same remaining bytes. The check at the start of an upload (`storage_left`)
    only cuts a stream short; this one decides."""
    tenants.lock_for_submission(session, tenant_id)
    quota = Quotas.of(session, tenant_id, settings).storage_bytes
    if tenants.storage_bytes(session, tenant_id) + size_bytes > quota:
        raise storage_exceeded(quota, settings)


def storage_exceeded(quota_bytes: int, settings: Settings) -> QuotaExceeded:
    return QuotaExceeded(
        f"the tenant's storage quota of {quota_bytes} bytes would be exceeded; "
        "wait for retention to free space or ask for a larger quota",
        retry_after_s=settings.quota_retry_after_s,
        quota="storage_bytes",
    )


def worker_slots(spec: JobSpec) -> int:
    """Workers the job occupies at most at once: its search and auto steps'
    `parallel_workers` (steps run one after another, so the largest), else 1."""
    return max(
        (step.parallel_workers for step in spec.steps if isinstance(step, FAN_OUT_STEPS)),
        default=1,
    )


def stored_worker_slots(spec: dict[str, object]) -> int:
    """`worker_slots` of a stored job's spec (its JSON, as submitted and validated)."""
    steps = spec.get("steps")
    slots = [
        int(step.get("parallel_workers", 1))
        for step in (steps if isinstance(steps, list) else [])
        if isinstance(step, dict) and step.get("method") in ("search", "auto")
    ]
    return max(slots, default=1)


def check_job_slot(
    session: Session, tenant_id: str, settings: Settings, *, specs: list[JobSpec]
) -> None:
    """Raise QuotaExceeded when the jobs of `specs` (a batch names several, all or
    nothing) would make the tenant's active jobs occupy more workers than its quota;
    InvalidSpec (422) when one job alone needs more than the quota.

    Takes the tenant's submission lock first, so concurrent submissions are counted one
    after another and cannot both take the last slot.
    """
    tenants.lock_for_submission(session, tenant_id)
    quota = Quotas.of(session, tenant_id, settings).concurrent_jobs
    for spec in specs:
        slots = worker_slots(spec)
        if slots > 1 and slots > quota:
            fields = ", ".join(
                f"steps[{index}].parallel_workers = {step.parallel_workers}"
                for index, step in enumerate(spec.steps)
                if isinstance(step, FAN_OUT_STEPS) and step.parallel_workers > quota
            )
            raise InvalidSpec(
                f"{fields}: a search or auto step occupies one worker per parallel worker, "
                "and the "
                f"tenant's quota is {quota} concurrent workers; ask for at most {quota}",
                code="parallel_workers_over_quota",
            )
    needed = sum(worker_slots(spec) for spec in specs)
    active = sum(stored_worker_slots(spec) for spec in tenants.active_job_specs(session, tenant_id))
    if active + needed > quota:
        asked = "" if needed == 1 else f"; this submission needs {needed} slots"
        raise QuotaExceeded(
            f"the tenant's queued and running jobs occupy {active} workers (a search counts "
            f"one per parallel worker), its quota is {quota}{asked}; "
            "submit again when one finishes",
            retry_after_s=settings.quota_retry_after_s,
            quota="concurrent_jobs",
        )
