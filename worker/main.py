"""Celery entry point: `celery -A worker.main worker -Q cpu`.

The parent process upgrades the schema and runs the reaper; each pool child builds its own
database engine (engines and CUDA must not cross a fork).
"""

from __future__ import annotations

import logging
import os
from contextvars import Token
from typing import Any

from billiard.process import active_children
from celery import signals
from celery.exceptions import Reject
from celery.worker import state as worker_state

from service.logs import configure_logging, job_id_var, log_context
from service.settings import get_settings
from store.blobs import open_blob_store
from store.db import make_engine, make_sessionmaker
from store.migrate import upgrade_to_head
from worker import engine_process
from worker.celery_app import RUN_JOB_TASK, SEARCH_TRIALS_TASK, make_celery
from worker.cleanup import clean_once
from worker.enqueue import JobQueue
from worker.limits import SHUTDOWN_SIGNAL, install_shutdown_handler, note_pool_size
from worker.periodic import Periodic
from worker.presence import WorkerPresence
from worker.reaper import drain_outbox, reap_once
from worker.runner import JobRunner, worker_name
from worker.search_helper import SearchHelper
from worker.webhooks import WebhookSender

log = logging.getLogger("squeeze.worker")
app = make_celery()
_runner: JobRunner | None = None
_search_helper: SearchHelper | None = None
_background: list[Periodic] = []
_presence: WorkerPresence | None = None


def get_runner() -> JobRunner:
    global _runner
    if _runner is None:
        settings = get_settings()
        sessions = make_sessionmaker(make_engine(settings.resolved_database_url))
        _runner = JobRunner(
            settings, sessions, open_blob_store(settings), queue=JobQueue(settings, app)
        )
    return _runner


def get_search_helper() -> SearchHelper:
    global _search_helper
    if _search_helper is None:
        runner = get_runner()
        _search_helper = SearchHelper(runner.settings, runner.sessions, runner.blobs)
    return _search_helper


@app.task(name=RUN_JOB_TASK, ignore_result=True)
def run_job(job_id: str) -> str:
    install_shutdown_handler()
    with log_context(job_id=job_id):
        outcome = get_runner().run(job_id)
    if outcome in ("declined", "released"):
        # The worker is shutting down: the message goes back to the broker for another
        # worker (acks_late: rejecting with requeue is what hands it back).
        raise Reject(f"worker shutting down; job {job_id} {outcome}", requeue=True)
    return outcome


@app.task(name=SEARCH_TRIALS_TASK, ignore_result=True)
def search_trials(job_id: str, study_name: str, helper_index: int) -> str:
    with log_context(job_id=job_id):
        return get_search_helper().run(job_id, study_name, helper_index)


@signals.setup_logging.connect
def _setup_logging(loglevel: int | str | None = None, **_: Any) -> None:
    """Our format (SQUEEZE_LOG_FORMAT: json or text, with the job id) instead of Celery's."""
    configure_logging(get_settings().log_format, loglevel or logging.INFO)


@signals.worker_init.connect
def _prepare(**_: Any) -> None:
    settings = get_settings()
    settings.ensure_dirs()
    upgrade_to_head(settings.resolved_database_url)


@signals.worker_ready.connect
def _start_background(sender: Any = None, **_: Any) -> None:
    """The worker's presence (registration and heartbeat), the reaper, the retention
    cleanup and webhook deliveries, in the parent process (every worker runs them; all
    are safe to run concurrently)."""
    global _presence
    settings = get_settings()
    sessions = make_sessionmaker(make_engine(settings.resolved_database_url))
    queue = JobQueue(settings, app)
    blobs = open_blob_store(settings)
    _presence = WorkerPresence(
        sessions,
        settings,
        name=str(getattr(sender, "hostname", None) or worker_name()),
        queues=consumed_queues(sender),
        concurrency=pool_size(sender),
        active=lambda: len(worker_state.active_requests),
    )
    _background.extend(
        [
            # first: the device probe runs in this thread, never blocking the consumer
            Periodic("presence", settings.worker_heartbeat_s, _presence.run_once),
            Periodic(
                "reaper", settings.reaper_interval_s, lambda: reap_once(sessions, queue, settings)
            ),
            # jobs accepted while the broker was down: sent as soon as it answers
            Periodic(
                "outbox", settings.outbox_interval_s, lambda: drain_outbox(sessions, queue)
            ),
            Periodic(
                "retention",
                settings.cleanup_interval_s,
                lambda: clean_once(sessions, blobs, settings),
            ),
            # webhook deliveries: never inside a job, so a slow receiver cannot hold one
            Periodic(
                "webhooks",
                settings.webhook_interval_s,
                WebhookSender(sessions, settings).run_once,
            ),
        ]
    )
    for task in _background:
        task.start()


@signals.worker_before_create_process.connect
def _note_pool_size(sender: Any = None, **_: Any) -> None:
    """In the parent, before it forks each pool process: the pool's size, which the
    children inherit and divide the default per-job memory ceiling by (worker.limits)."""
    size = getattr(sender, "_processes", None)  # billiard's Pool: its process count
    if isinstance(size, int) and size > 0:
        note_pool_size(size)


@signals.worker_process_init.connect
def _fresh_child(**_: Any) -> None:
    global _runner, _search_helper
    settings = get_settings()
    lower_job_priority(settings.worker_job_nice)
    _runner = None  # a forked child builds its own engine on first use
    _search_helper = None
    if settings.engine_fork_server:
        # its imports (torch, seconds) overlap the wait for work: started at the first
        # request, they outlasted a search's short trials and its helpers joined too late
        engine_process.warm_fork_server()


def lower_job_priority(increment: int) -> None:
    """Jobs are CPU-bound for minutes; the API's polls and the worker's own heartbeat are
    not, and on a machine they share, polls waited for a CPU while every core ran a job
    (an attack pass saw p99 4.3 s with 200 pollers on PostgreSQL + Redis)."""
    if increment > 0:
        os.nice(increment)


_task_log_tokens: dict[str, Token[str | None]] = {}


@signals.task_prerun.connect
def _job_id_for_the_whole_task(task_id: str, args: Any = None, **_: Any) -> None:
    """Celery's own lines about the task (its result, its time) carry the job id too:
    the context covers the task from before it runs until after Celery logs its end."""
    if args:
        _task_log_tokens[task_id] = job_id_var.set(str(args[0]))


@signals.task_postrun.connect
def _end_job_id(task_id: str, **_: Any) -> None:
    token = _task_log_tokens.pop(task_id, None)
    if token is not None:
        job_id_var.reset(token)


@signals.worker_shutting_down.connect
def _release_running_jobs(**_: Any) -> None:
    """A warm shutdown (SIGTERM) waits for running tasks: ask the pool processes to stop
    their jobs at the next progress check and hand them back to the queue, so the worker
    exits in seconds instead of after the job (or being killed mid-way by its host)."""
    for child in active_children():
        if child.pid is not None:
            try:
                os.kill(child.pid, SHUTDOWN_SIGNAL)
            except ProcessLookupError:
                continue


@signals.worker_shutdown.connect
def _stop_background(**_: Any) -> None:
    for task in _background:
        task.stop()
    if _presence is not None:
        _presence.stop()


def consumed_queues(consumer: Any) -> list[str]:
    """The queues this worker consumes (`-Q`), from its consumer, else from the app."""
    try:
        names = [queue.name for queue in consumer.task_consumer.queues]
    except AttributeError:
        names = list(app.amqp.queues.consume_from or app.amqp.queues)
    return sorted(set(names))


def pool_size(consumer: Any) -> int:
    """Pool processes (`--concurrency`): how many jobs this worker runs at once."""
    for value in (
        getattr(getattr(consumer, "controller", None), "concurrency", None),
        getattr(getattr(consumer, "pool", None), "num_processes", None),
    ):
        if isinstance(value, int) and value > 0:
            return value
    return 1
