"""A watched job that stays queued because no live worker consumes its queue: the CLI says
so in one line, naming the queue and how to start a worker, instead of a bar at 0%
(issue 19). Real uvicorn and the API's own worker registry; no worker runs the jobs."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn

from api.app import create_app
from service.settings import Settings
from squeeze.cli import main
from squeeze.client import Client
from store import workers
from store.db import transaction
from tests.api.conftest import ADMIN_TOKEN
from tests.cli.conftest import free_port, tenant_token
from tests.services import fast_test_settings

EXIT_JOB_FAILED = 1


@dataclass
class Queued:
    url: str
    token: str
    settings: Settings
    app: object


@pytest.fixture(scope="module")
def queued(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Queued]:
    """The API with absent_worker_policy=queue (jobs are taken without a worker) and no
    worker at all."""
    folder = tmp_path_factory.mktemp("absent")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        settings = fast_test_settings(
            folder / "data", admin_api_key=ADMIN_TOKEN, absent_worker_policy="queue"
        )
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
        url = f"http://127.0.0.1:{port}"
        try:
            yield Queued(url=url, token=tenant_token(url), settings=settings, app=app)
        finally:
            server.should_exit = True
            thread.join(timeout=30)


def submit(queued: Queued, model_file: Path, dataset_file: Path) -> str:
    with Client(queued.url, queued.token) as client:
        model = client.upload_model(model_file)
        data = client.upload_dataset(dataset_file)
        job = client.submit_job(
            {
                "model_id": model.id,
                "eval_dataset_id": data.id,
                "steps": [{"method": "quantize", "mode": "dynamic"}],
            }
        )
    assert job.state == "queued" and job.queue == queued.settings.queue_cpu
    return job.id


def watch_then_cancel(queued: Queued, job_id: str, until: str | None, wait_s: float) -> str:
    """`squeeze watch JOB` in a thread; once `until` is in its stderr (or after `wait_s`)
    the job is cancelled, which ends the watch. Returns stderr."""
    out, err = io.StringIO(), io.StringIO()
    codes: list[int] = []
    argv = ["--url", queued.url, "--api-key", queued.token, "watch", job_id]
    thread = threading.Thread(target=lambda: codes.append(main(argv, stdout=out, stderr=err)))
    thread.start()
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and not (until and until in err.getvalue()):
        time.sleep(0.2)
    with Client(queued.url, queued.token) as client:
        client.cancel_job(job_id)
    thread.join(timeout=30)
    assert codes == [EXIT_JOB_FAILED], out.getvalue() + err.getvalue()
    assert "cancelled" in out.getvalue()
    return err.getvalue()


def test_a_job_queued_with_no_live_worker_says_so_naming_the_queue(
    queued: Queued, model_file: Path, dataset_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SQUEEZE_WARN_NO_WORKER_S", "1")
    job_id = submit(queued, model_file, dataset_file)
    err = watch_then_cancel(queued, job_id, until="no live worker", wait_s=30)
    queue = queued.settings.queue_cpu
    (line,) = [line for line in err.splitlines() if "no live worker" in line]
    assert line.startswith(f"squeeze: job {job_id} is queued on {queue!r}")
    assert f"celery -A worker.main worker -Q {queue}" in line and "squeeze serve" in line


def test_no_warning_while_a_live_worker_consumes_the_queue(
    queued: Queued, model_file: Path, dataset_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SQUEEZE_WARN_NO_WORKER_S", "1")
    services = queued.app.state.services  # type: ignore[attr-defined]
    with transaction(services.sessions) as session:
        workers.register(
            session,
            workers.Capabilities(
                name="busy@host", hostname="host", pid=42, queues=[queued.settings.queue_cpu],
                concurrency=1, runtimes={"onnxruntime": ["cpu"]}, devices=["cpu"], gpus=[],
                version="0.1.0",
            ),
        )  # fmt: skip
    job_id = submit(queued, model_file, dataset_file)
    # a live worker that has not taken the job yet (busy elsewhere): nothing to warn of
    err = watch_then_cancel(queued, job_id, until=None, wait_s=5)
    assert "no live worker" not in err
