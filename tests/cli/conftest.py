"""A real service for the CLI: uvicorn on a free port in a thread, with the worker's
JobRunner running queued jobs in-process (the tests in tests/integration use real worker
processes; here the CLI's side is what is tested, over real HTTP)."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from sqlalchemy import select

from api.app import create_app
from service.settings import Settings
from squeeze.cli import main
from store.tables import JobRow
from tests.api.conftest import ADMIN_TOKEN, assets, dataset_file, model_file  # noqa: F401
from tests.services import fast_test_settings
from worker.runner import JobRunner


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PacedRunner(JobRunner):
    """The worker's runner with a pause after each progress report, so that a watcher
    polling twice a second sees the job's steps go by (the digits job alone takes less
    than a second here)."""

    pace_s = 0.3

    def _progress_writer(self, job_id: str, attempt: int) -> Any:
        write = super()._progress_writer(job_id, attempt)

        def paced(progress: float, message: str, data: dict[str, Any]) -> None:
            write(progress, message, data)
            time.sleep(self.pace_s)

        return paced


class InlineWorker(threading.Thread):
    """Runs the jobs queued on one queue, one at a time, until stopped."""

    def __init__(self, runner: JobRunner, queue: str) -> None:
        super().__init__(name="inline-worker", daemon=True)
        self.runner = runner
        self.queue = queue
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.1):
            with self.runner.sessions() as session:
                queued = session.scalars(
                    select(JobRow.id)
                    .where(JobRow.state == "queued", JobRow.queue == self.queue)
                    .order_by(JobRow.created_at)
                ).all()
            for job_id in queued:
                self.runner.run(job_id)


@dataclass
class Live:
    url: str
    token: str
    settings: Settings

    def run(self, *argv: str) -> tuple[int, str, str]:
        """The CLI in-process against this service: (exit code, stdout, stderr)."""
        out, err = io.StringIO(), io.StringIO()
        code = main(["--url", self.url, "--api-key", self.token, *argv], stdout=out, stderr=err)
        return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    folder = tmp_path_factory.mktemp("live")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)  # kombu's file-system transport writes ./control
        settings = fast_test_settings(folder / "data", admin_api_key=ADMIN_TOKEN)
        app = create_app(settings)
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        services = app.state.services
        worker = InlineWorker(
            PacedRunner(services.settings, services.sessions, services.blobs), settings.queue_cpu
        )
        worker.start()
        url = f"http://127.0.0.1:{port}"
        try:
            yield Live(url=url, token=tenant_token(url), settings=settings)
        finally:
            worker.stopped.set()
            worker.join(timeout=60)
            server.should_exit = True
            thread.join(timeout=30)


def tenant_token(url: str) -> str:
    """A tenant's key, made with the admin key as an operator would."""
    from squeeze.client import Client

    with Client(url, api_key=ADMIN_TOKEN) as admin:
        tenant = admin.create_tenant("cli-tests")
        return admin.create_tenant_key(tenant.id, "cli").token


@pytest.fixture(scope="module")
def data_files(dataset_file: Path, model_file: Path) -> tuple[Path, Path]:  # noqa: F811
    return model_file, dataset_file
