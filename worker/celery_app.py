"""The Celery app, built from settings (queues `cpu` and `gpu`, JSON only, late acks)."""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Queue

from service.settings import Settings, get_settings

# by name: kombu imports it in whichever process connects (the API and the workers)
FS_TRANSPORT = "worker.fs_transport:Transport"

RUN_JOB_TASK = "squeeze.run_job"
# a helper joining a running job's architecture search (worker/search_helper.py)
SEARCH_TRIALS_TASK = "squeeze.search_trials"


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    if settings.uses_filesystem_broker:
        folder = str(settings.broker_dir)
        # Producer and consumers share one folder: the embedded broker with no server.
        # kombu keeps exchange bindings in ./control unless told otherwise: keep it in the
        # data dir too (the working directory may be read-only, as in the image).
        return {
            "data_folder_in": folder,
            "data_folder_out": folder,
            "control_folder": str(settings.broker_dir / "control"),
            "store_processed": False,
            # The folder is polled (kombu's default: every second); a job should not
            # wait a second for its worker to look. Listing a folder 10x/s is cheap.
            "polling_interval": 0.1,
        }
    # Redis redelivers unacknowledged messages after this; above the hard time limit so a
    # long job is not handed to a second worker while the first still runs it.
    return {"visibility_timeout": settings.broker_visibility_timeout_s}


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    if settings.uses_filesystem_broker:
        settings.broker_dir.mkdir(parents=True, exist_ok=True)
    app = Celery("squeeze")
    if settings.uses_filesystem_broker:
        # kombu's file-system transport with atomic writes (worker/fs_transport.py): its
        # own lets a consumer read a half-written message and die of it
        app.conf.broker_transport = FS_TRANSPORT
    app.conf.update(
        broker_url=settings.resolved_broker_url,
        broker_transport_options=broker_transport_options(settings),
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,  # the database row is the result
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.task_soft_time_limit_s,
        task_time_limit=settings.task_hard_time_limit_s,
        task_default_queue=settings.queue_cpu,
        task_queues=[Queue(settings.queue_cpu), Queue(settings.queue_gpu)],
        task_publish_retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        enable_utc=True,
    )
    return app
