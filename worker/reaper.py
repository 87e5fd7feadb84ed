"""Recovers jobs from the database: dead workers' jobs and lost messages are sent again."""

from __future__ import annotations

import logging
import threading

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


class Reaper:
    """Runs `reap_once` every `reaper_interval_s` in a daemon thread of the worker's parent."""

    def __init__(
        self, sessions: sessionmaker[Session], queue: JobQueue, settings: Settings
    ) -> None:
        self._sessions = sessions
        self._queue = queue
        self._settings = settings
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _loop(self) -> None:
        while True:
            try:
                reap_once(self._sessions, self._queue, self._settings)
            except Exception:  # the reaper must outlive a DB or broker outage
                log.exception("reaper pass failed")
            if self._stopped.wait(self._settings.reaper_interval_s):
                return
