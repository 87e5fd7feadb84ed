"""Sending work to the broker. The API imports this module, never the tasks."""

from __future__ import annotations

from celery import Celery

from squeeze.settings import Settings
from worker.celery_app import RUN_JOB_TASK, make_celery


class JobQueue:
    """Publishes run_job messages (JSON, carrying only the job id) and checks the broker."""

    def __init__(self, settings: Settings, app: Celery | None = None) -> None:
        self.settings = settings
        self.app = app or make_celery(settings)

    def queue_for(self, device: str) -> str:
        return self.settings.queue_gpu if device == "cuda" else self.settings.queue_cpu

    def send(self, job_id: str, queue: str) -> None:
        self.app.send_task(RUN_JOB_TASK, args=[job_id], queue=queue)

    def ping(self) -> None:
        """Raises when the broker cannot be reached."""
        if self.settings.uses_filesystem_broker:
            folder = self.settings.broker_dir
            if not folder.is_dir():
                raise ConnectionError(f"broker folder {folder} is missing")
            probe = folder / ".readyz"
            probe.write_bytes(b"")
            probe.unlink()
            return
        with self.app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
