"""Readiness: the service can serve requests only when its database, broker and blob
store answer."""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import Engine

from api.errors import NotReady
from store.blobs import BlobStore
from store.db import ping
from worker.enqueue import JobQueue

logger = logging.getLogger(__name__)


def check_ready(engine: Engine, queue: JobQueue, blobs: BlobStore) -> dict[str, str]:
    """{"database": "ok", "broker": "ok", "blob_store": "ok"}; raises NotReady naming
    what failed."""
    checks = {
        "database": _run_check("database", lambda: ping(engine)),
        "broker": _run_check("broker", queue.ping),
        "blob_store": _run_check("blob_store", blobs.check),
    }
    if any(status != "ok" for status in checks.values()):
        raise NotReady(checks)
    return checks


def _run_check(name: str, check: Callable[[], None]) -> str:
    try:
        check()
    except Exception as exc:
        logger.warning("readiness check %s failed", name, exc_info=True)
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        return f"failed: {reason}"
    return "ok"
