"""Keeps a running job's lease alive and notices cancellation, from a background thread."""

from __future__ import annotations

import logging
import threading

from sqlalchemy.orm import Session, sessionmaker

from service.logs import log_context
from store import jobs
from store.db import transaction
from worker.limits import SHUTDOWN

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews the lease every `heartbeat_s`; flags `lost` when another attempt took the job.

    The engine polls `should_stop()` at every progress report, so both a cancellation and
    a lost lease stop the work instead of letting two attempts race.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        job_id: str,
        attempt: int,
        *,
        lease_s: float,
        heartbeat_s: float,
    ) -> None:
        self._sessions = sessions
        self._job_id = job_id
        self._attempt = attempt
        self._lease_s = lease_s
        self._heartbeat_s = heartbeat_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{job_id}", daemon=True)
        self.lost = False
        self.cancelled = False

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        self._thread.join(timeout=self._heartbeat_s + 5)

    def should_stop(self) -> bool:
        return self.lost or self.cancelled or SHUTDOWN.is_set()

    @property
    def shutting_down(self) -> bool:
        """The worker is shutting down (and the job was neither cancelled nor lost)."""
        return SHUTDOWN.is_set() and not (self.lost or self.cancelled)

    def beat(self) -> None:
        with transaction(self._sessions) as session:
            if not jobs.renew_lease(session, self._job_id, self._attempt, lease_s=self._lease_s):
                self.lost = True
            if jobs.is_cancel_requested(session, self._job_id):
                self.cancelled = True

    def _loop(self) -> None:
        # A thread starts with an empty logging context: give its lines the job id too.
        with log_context(job_id=self._job_id):
            while not self._stopped.wait(self._heartbeat_s):
                try:
                    self.beat()
                except Exception:  # a DB hiccup must not kill the job; the next beat retries
                    log.exception("lease renewal failed for %s", self._job_id)
