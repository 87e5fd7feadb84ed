"""Sending work to the broker. The API imports this module, never the tasks."""

from __future__ import annotations

from celery import Celery
from kombu.exceptions import ChannelError

from service.settings import Settings
from worker.celery_app import RUN_JOB_TASK, SEARCH_TRIALS_TASK, make_celery


class JobQueue:
    """Publishes run_job messages (JSON, carrying only the job id) and checks the broker."""

    def __init__(self, settings: Settings, app: Celery | None = None) -> None:
        self.settings = settings
        self.app = app or make_celery(settings)

    def queue_for(self, device: str) -> str:
        return self.settings.queue_gpu if device == "cuda" else self.settings.queue_cpu

    def send(self, job_id: str, queue: str) -> None:
        self.app.send_task(RUN_JOB_TASK, args=[job_id], queue=queue)

    def send_search_helpers(self, job_id: str, study_name: str, count: int, queue: str) -> None:
        """Ask `count` other workers to join the job's search study (helpers 1..count)."""
        for helper_index in range(1, count + 1):
            self.app.send_task(
                SEARCH_TRIALS_TASK, args=[job_id, study_name, helper_index], queue=queue
            )

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

    def queue_length(self, queue: str) -> int:
        """Messages waiting in the broker's queue (0 for a queue the broker does not have
        yet); raises when the broker cannot be reached."""
        with self.app.connection_for_read() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
            try:
                declared = connection.default_channel.queue_declare(queue=queue, passive=True)
            except ChannelError:  # Redis: an empty queue is no key at all
                return 0
            return int(declared.message_count)
