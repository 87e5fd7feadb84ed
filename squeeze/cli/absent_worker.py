"""While a watched job is queued, is any worker alive on its queue? If none has been for
`after_s` seconds, one line says so (instead of a bar that sits at 0%) and how to start
one. The live workers per queue come from /readyz (no admin key needed), the job's queue
from its record; the check runs at most every `every_s` seconds.

`SQUEEZE_WARN_NO_WORKER_S` sets `after_s` (10 s; 0 turns the warning off)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TextIO

from squeeze.client import Client
from squeeze.client.errors import SqueezeError
from squeeze.client.models import Job

DEFAULT_AFTER_S = 10.0


def warn_after_s() -> float:
    try:
        return max(0.0, float(os.environ.get("SQUEEZE_WARN_NO_WORKER_S", DEFAULT_AFTER_S)))
    except ValueError:
        return DEFAULT_AFTER_S


class AbsentWorkerWarning:
    """An `on_update` for `Client.wait`, next to the progress bar."""

    def __init__(
        self,
        client: Client,
        stream: TextIO,
        *,
        after_s: float | None = None,
        every_s: float = 2.0,
        before_warning: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.stream = stream
        self.after_s = warn_after_s() if after_s is None else after_s
        self.every_s = every_s
        # the progress display ends its line first (it redraws in place on a terminal)
        self.before_warning = before_warning
        self.clock = clock
        self._absent_since: float | None = None
        self._checked_at: float | None = None
        self._warned = False

    def __call__(self, job: Job) -> None:
        if self.after_s <= 0 or job.state != "queued" or job.queue is None:
            self._absent_since = None
            return
        now = self.clock()
        if self._checked_at is not None and now - self._checked_at < self.every_s:
            return
        self._checked_at = now
        live = self._live_workers(job.queue)
        if live is None:  # /readyz did not answer: say nothing rather than guess
            return
        if live > 0:
            self._absent_since = None
            self._warned = False
            return
        if self._absent_since is None:
            self._absent_since = now
        waited = now - self._absent_since
        if not self._warned and waited >= self.after_s:
            self._warned = True
            self.before_warning()
            self.stream.write(
                f"squeeze: job {job.id} is queued on {job.queue!r} and no live worker has "
                f"consumed that queue for {waited:.0f} s; it starts when one does: "
                f"`squeeze serve` (the service and a worker on this machine) or "
                f"`celery -A worker.main worker -Q {job.queue}` beside the API\n"
            )
            self.stream.flush()

    def _live_workers(self, queue: str) -> int | None:
        try:
            workers = self.client.ready().get("workers", {})
        except SqueezeError:
            return None
        # a queue /readyz does not count is unknown, not empty
        value = workers.get(queue) if isinstance(workers, dict) else None
        return value if isinstance(value, int) else None
