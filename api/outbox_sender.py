"""The API's outbox timer: job messages the broker refused at submission are sent as
soon as it answers again, even with no worker's outbox pass running (store.outbox)."""

from __future__ import annotations

import asyncio
import functools
import logging

import anyio.to_thread
from sqlalchemy.orm import Session, sessionmaker

from store import outbox
from worker.enqueue import JobQueue

logger = logging.getLogger(__name__)


async def drain_forever(
    sessions: sessionmaker[Session], queue: JobQueue, interval_s: float
) -> None:
    """Every `interval_s`, send what the outbox holds (in a worker thread: the broker
    client blocks). Runs until cancelled; a failing pass is logged and retried."""
    def send(job_id: str, queue_name: str) -> None:
        queue.send(job_id, queue_name)

    drain = functools.partial(outbox.drain, sessions, send)
    while True:
        await asyncio.sleep(interval_s)
        try:
            result = await anyio.to_thread.run_sync(drain)
        except Exception:  # the database is down: the next tick tries again
            logger.warning("outbox pass failed", exc_info=True)
            continue
        if result.sent:
            logger.info("outbox: sent %d held-back job message(s)", len(result.sent))
