"""Recovers jobs from the database: dead workers' jobs and lost messages are sent again.

Never without limit: re-sends back off and stop after `max_resends` (the job fails
`never_claimed`), a queue no live worker consumes gets none (its jobs fail
`no_worker_available` after `absent_worker_expiry_s`), and a queue whose workers are
all busy is left to wait its turn (store.jobs.reap).
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session, sessionmaker

from service.settings import Settings
from store import jobs, workers
from store.db import transaction
from worker.enqueue import JobQueue

log = logging.getLogger(__name__)


def reap_once(sessions: sessionmaker[Session], queue: JobQueue, settings: Settings) -> list[str]:
    """One pass: returns the ids of the jobs sent again."""
    with transaction(sessions) as session:
        names = {settings.queue_cpu, settings.queue_gpu, *jobs.queued_queues(session)}
        services = workers.queue_services(
            session, sorted(names), dead_after_s=settings.worker_dead_after_s
        )
        recovered = jobs.reap(
            session,
            requeue_queued_after_s=settings.requeue_queued_after_s,
            max_attempts=settings.max_attempts,
            max_resends=settings.max_resends,
            queues=services,
            absent_worker_expiry_s=settings.absent_worker_expiry_s,
        )
        targets = [(job.id, job.queue) for job in recovered]
    for job_id, queue_name in targets:
        queue.send(job_id, queue_name)
        log.info("reaper: sent job %s again to %s", job_id, queue_name)
    return [job_id for job_id, _ in targets]
