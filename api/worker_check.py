"""Is there a live worker for the job? Checked at submission (settings.absent_worker_policy).

A requirement is a queue and, where the job needs one, a device and a runtime (a "cuda"
job: the gpu queue, a worker whose ONNX Runtime offers "cuda"). Deployment targets add
their runtime and device through the same `Requirement`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from api.errors import NoWorkerForTarget
from core.spec import JobSpec
from service.settings import Settings
from store import jobs, workers


@dataclass(frozen=True)
class Requirement:
    queue: str
    device: str | None = None
    runtime: str | None = None

    def describe(self) -> str:
        needs = [f"queue {self.queue!r}"]
        if self.device is not None:
            needs.append(f"device {self.device!r}")
        if self.runtime is not None:
            needs.append(f"runtime {self.runtime!r}")
        return ", ".join(needs)


def requirement_for(device: str, queue: str) -> Requirement:
    """What a job on `device` (the spec's: cpu, cuda, auto) needs of a worker on `queue`:
    a "cuda" job a worker whose ONNX Runtime runs on CUDA; others any worker there."""
    if device == "cuda":
        return Requirement(queue=queue, device="cuda", runtime="onnxruntime")
    return Requirement(queue=queue)


def requirements_for(spec: JobSpec, queue: str) -> list[Requirement]:
    """Everything the job needs of the one worker that runs it: its device, and the
    runtime and device of each deployment target (one worker measures them all)."""
    needs = [requirement_for(spec.device, queue)]
    for target in spec.deployment:
        needed = Requirement(queue=queue, device=target.device, runtime=target.runtime)
        if needed not in needs:
            needs.append(needed)
    return needs


def check_all(
    session: Session, requirements: list[Requirement], settings: Settings
) -> str | None:
    """`check_workers` for each requirement; the first reason to wait, if any."""
    waiting = None
    for requirement in requirements:
        reason = check_workers(session, requirement, settings)
        waiting = waiting or reason
    return waiting


def unserved(session: Session, requirement: Requirement, settings: Settings) -> str | None:
    """None when a live worker meets the requirement, else why not (for people)."""
    service = workers.queue_services(
        session, [requirement.queue], dead_after_s=settings.worker_dead_after_s
    )[requirement.queue]
    if service.serves(requirement.device, requirement.runtime):
        return None
    if service.live == 0:
        return f"no live worker consumes queue {requirement.queue!r}"
    return (
        f"the {service.live} live worker(s) on queue {requirement.queue!r} offer devices "
        f"{service.devices()}, not {requirement.describe()}"
    )


def available_workers(session: Session, settings: Settings) -> list[dict[str, Any]]:
    """What the live workers offer, for the problem body: queues, devices, runtimes."""
    return [
        {
            "name": worker.name,
            "queues": worker.queues,
            "devices": worker.devices,
            "runtimes": worker.runtimes,
        }
        for worker in workers.live_workers(session, dead_after_s=settings.worker_dead_after_s)
    ]


def check_workers(session: Session, requirement: Requirement, settings: Settings) -> str | None:
    """Apply the policy: raises NoWorkerForTarget under "refuse"; returns the reason the
    job will wait under "queue" (the caller records it on the job); None when served or
    the policy is "off"."""
    if settings.absent_worker_policy == "off":
        return None
    reason = unserved(session, requirement, settings)
    if reason is None:
        return None
    if settings.absent_worker_policy == "refuse":
        raise NoWorkerForTarget(
            f"{reason}: a job needing {requirement.describe()} would never run. Start a "
            f"worker on that queue (celery -A worker.main worker -Q {requirement.queue}), "
            "or submit the job for a device a running worker has (see `available`)",
            queue=requirement.queue,
            device=requirement.device,
            runtime=requirement.runtime,
            available=available_workers(session, settings),
        )
    return reason


def record_waiting(session: Session, job_id: str, reason: str, settings: Settings) -> None:
    """The job's log says it was accepted without a worker, and when it will expire."""
    jobs.add_event(
        session,
        job_id,
        0,
        "waiting_for_worker",
        f"{reason}: the job waits for one (absent_worker_policy=queue) and fails with "
        f"no_worker_available once its queue has had no live worker for "
        f"{settings.absent_worker_expiry_s:g} s",
        {"reason": reason, "expires_after_s": settings.absent_worker_expiry_s},
    )
