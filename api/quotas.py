"""Per-tenant quotas: storage bytes and concurrent (queued or running) jobs.

A tenant row may set its own limits; otherwise the service's defaults apply. Reaching a
quota is a 429 with `Retry-After`: both limits free up as jobs finish or data expires.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from api.errors import QuotaExceeded
from service.settings import Settings
from store import tenants


@dataclass(frozen=True)
class Quotas:
    storage_bytes: int
    concurrent_jobs: int

    @classmethod
    def of(cls, session: Session, tenant_id: str, settings: Settings) -> Quotas:
        tenant = tenants.get_tenant(session, tenant_id)
        return cls(
            storage_bytes=tenant.quota_storage_bytes or settings.quota_storage_bytes,
            concurrent_jobs=tenant.quota_concurrent_jobs or settings.quota_concurrent_jobs,
        )


def storage_left(session: Session, tenant_id: str, settings: Settings) -> int:
    """Bytes the tenant may still store; QuotaExceeded when nothing is left."""
    quota = Quotas.of(session, tenant_id, settings).storage_bytes
    left = quota - tenants.storage_bytes(session, tenant_id)
    if left <= 0:
        raise storage_exceeded(quota, settings)
    return left


def storage_exceeded(quota_bytes: int, settings: Settings) -> QuotaExceeded:
    return QuotaExceeded(
        f"the tenant's storage quota of {quota_bytes} bytes would be exceeded; "
        "wait for retention to free space or ask for a larger quota",
        retry_after_s=settings.quota_retry_after_s,
        quota="storage_bytes",
    )


def check_job_slot(
    session: Session, tenant_id: str, settings: Settings, *, needed: int = 1
) -> None:
    """Raise QuotaExceeded when `needed` more active jobs would exceed the tenant's quota
    (a batch asks for one slot per job, all or nothing).

    Takes the tenant's submission lock first, so concurrent submissions are counted one
    after another and cannot both take the last slot.
    """
    tenants.lock_for_submission(session, tenant_id)
    quota = Quotas.of(session, tenant_id, settings).concurrent_jobs
    active = tenants.active_jobs(session, tenant_id)
    if active + needed > quota:
        asked = "" if needed == 1 else f"; this submission needs {needed} slots"
        raise QuotaExceeded(
            f"the tenant has {active} queued or running jobs, its quota is {quota}{asked}; "
            "submit again when one finishes",
            retry_after_s=settings.quota_retry_after_s,
            quota="concurrent_jobs",
        )
