"""Celery entry point: `celery -A worker.main worker -Q cpu`.

The parent process upgrades the schema and runs the reaper; each pool child builds its own
database engine (engines and CUDA must not cross a fork).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

from squeeze.settings import get_settings
from store.blobs import BlobStore
from store.db import make_engine, make_sessionmaker
from store.migrate import upgrade_to_head
from worker.celery_app import RUN_JOB_TASK, make_celery
from worker.cleanup import clean_once
from worker.enqueue import JobQueue
from worker.periodic import Periodic
from worker.reaper import reap_once
from worker.runner import JobRunner

log = logging.getLogger("squeeze.worker")
app = make_celery()
_runner: JobRunner | None = None
_background: list[Periodic] = []


def get_runner() -> JobRunner:
    global _runner
    if _runner is None:
        settings = get_settings()
        sessions = make_sessionmaker(make_engine(settings.resolved_database_url))
        _runner = JobRunner(settings, sessions, BlobStore(settings.blob_dir))
    return _runner


@app.task(name=RUN_JOB_TASK, ignore_result=True)
def run_job(job_id: str) -> str:
    return get_runner().run(job_id)


@signals.worker_init.connect
def _prepare(**_: Any) -> None:
    settings = get_settings()
    settings.ensure_dirs()
    upgrade_to_head(settings.resolved_database_url)


@signals.worker_ready.connect
def _start_background(**_: Any) -> None:
    """The reaper and the retention cleanup, in the parent process (every worker runs
    them; both are safe to run concurrently)."""
    settings = get_settings()
    sessions = make_sessionmaker(make_engine(settings.resolved_database_url))
    queue = JobQueue(settings, app)
    blobs = BlobStore(settings.blob_dir)
    _background.extend(
        [
            Periodic(
                "reaper", settings.reaper_interval_s, lambda: reap_once(sessions, queue, settings)
            ),
            Periodic(
                "retention",
                settings.cleanup_interval_s,
                lambda: clean_once(sessions, blobs, settings),
            ),
        ]
    )
    for task in _background:
        task.start()


@signals.worker_process_init.connect
def _fresh_child(**_: Any) -> None:
    global _runner
    _runner = None  # a forked child builds its own engine on first use


@signals.worker_shutdown.connect
def _stop_background(**_: Any) -> None:
    for task in _background:
        task.stop()
