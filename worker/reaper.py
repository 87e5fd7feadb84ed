"""Recovers jobs from the database: dead workers' jobs and lost messages are sent again.

Never without limit: re-sends back off and stop after `max_resends` (the job fails
`never_claimed`), a queue no live worker consumes gets none (its jobs fail
`no_worker_available` after `absent_worker_expiry_s`), and a queue whose workers are
all busy is left to wait its turn (store.jobs.reap). One pass at a time: on PostgreSQL
the pass holds an advisory lock, so the reapers of several workers never handle a job
twice. Messages go through the outbox (store.outbox).
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session, sessionmaker

from service.settings import Settings
from store import jobs, outbox, workers
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
        log.info("reaper: sending job %s again to %s", job_id, queue_name)
    # the messages were committed to the outbox with the jobs' new state: a broker that
    # is down now loses none of them (the outbox pass sends them when it answers)
    if targets:
        outbox.drain(sessions, queue.send, job_ids=[job_id for job_id, _ in targets])
    return [job_id for job_id, _ in targets]


def drain_outbox(sessions: sessionmaker[Session], queue: JobQueue) -> list[str]:
    """The workers' outbox pass: send what submissions and the reaper left unsent."""
    result = outbox.drain(sessions, queue.send)
    if result.sent:
        log.info("outbox: sent %d held-back job message(s)", len(result.sent))
    return result.sent
