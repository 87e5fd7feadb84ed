"""Recovers jobs from the database: dead workers' jobs and lost messages are sent again."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session, sessionmaker

from squeeze.settings import Settings
from store import jobs
from store.db import transaction
from worker.enqueue import JobQueue

log = logging.getLogger(__name__)


def reap_once(sessions: sessionmaker[Session], queue: JobQueue, settings: Settings) -> list[str]:
    """One pass: returns the ids of the jobs sent again."""
    with transaction(sessions) as session:
        recovered = jobs.reap(
            session,
            requeue_queued_after_s=settings.requeue_queued_after_s,
            max_attempts=settings.max_attempts,
        )
        targets = [(job.id, job.queue) for job in recovered]
    for job_id, queue_name in targets:
        queue.send(job_id, queue_name)
        log.info("reaper: sent job %s again to %s", job_id, queue_name)
    return [job_id for job_id, _ in targets]
