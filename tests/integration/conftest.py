"""Both deployment profiles, each with the API in-process and real Celery worker processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from service.runner import stop_together
from service.settings import Settings
from tests.api.conftest import ADMIN_TOKEN
from tests.conftest import DigitsFiles
from tests.services import WorkerProcess, delete_redis_queues, fast_test_settings, wait_for

FINAL = {"succeeded", "failed", "cancelled"}


@dataclass
class Deployment:
    settings: Settings
    client: TestClient
    tmp_path: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    def start_worker(self) -> WorkerProcess:
        worker = WorkerProcess(self.settings, self.tmp_path / f"worker-{len(self.workers)}.log")
        self.workers.append(worker.start())
        return worker

    def upload(self, route: str, path: Path) -> str:
        with path.open("rb") as handle:
            response = self.client.post(route, files={"file": (path.name, handle)})
        assert response.status_code in (200, 201), response.text  # 200: reused
        return str(response.json()["id"])

    def upload_digits(self, digits: DigitsFiles) -> dict[str, Any]:
        return {
            "model_id": self.upload("/v1/models", digits.model),
            "calibration_dataset_id": self.upload("/v1/datasets", digits.calibration),
            "eval_dataset_id": self.upload("/v1/datasets", digits.evaluation),
            "steps": [{"method": "quantize", "mode": "static"}],
            "batch_size": 8,
        }

    def submit(self, spec: dict[str, Any]) -> str:
        response = self.client.post("/v1/jobs", json=spec)
        assert response.status_code == 202, response.text
        return str(response.headers["location"])

    def get(self, url: str) -> dict[str, Any]:
        response = self.client.get(url)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def wait_final(self, job_url: str, timeout_s: float = 180) -> dict[str, Any]:
        finished = wait_for(lambda: self.get(job_url)["state"] in FINAL, timeout_s, 0.5)
        job = self.get(job_url)
        assert finished, f"job still {job['state']}; worker logs:\n{self.worker_logs()}"
        return job

    def worker_logs(self) -> str:
        return "\n".join(worker.log()[-4000:] for worker in self.workers)


DeploymentFactory = Callable[..., Deployment]


@pytest.fixture(params=["embedded", "postgres_redis"])
def deploy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DeploymentFactory]:
    """Builds the profile under test; stops its workers and clears its queues afterwards."""
    built: list[Deployment] = []

    def build(**overrides: Any) -> Deployment:
        if request.param == "postgres_redis":
            overrides.setdefault("database_url", request.getfixturevalue("postgres_url"))
            overrides.setdefault("broker_url", request.getfixturevalue("redis_url"))
        settings = fast_test_settings(tmp_path / "data", admin_api_key=ADMIN_TOKEN, **overrides)
        client = TestClient(
            create_app(settings), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        client.__enter__()
        deployment = Deployment(settings, client, tmp_path)
        built.append(deployment)
        return deployment

    yield build
    # every worker asked at once, one shared timeout: two workers slow to stop cost one
    # wait, not two (CI showed teardowns of 20-27 s)
    stop_together(
        [worker.process for d in built for worker in d.workers if worker.process is not None],
        timeout_s=20,
    )
    for deployment in built:
        deployment.client.__exit__(None, None, None)
        if not deployment.settings.uses_filesystem_broker:
            delete_redis_queues([deployment.settings.queue_cpu, deployment.settings.queue_gpu])


def download(deployment: Deployment, job_id: str, name: str) -> httpx.Response:
    response = deployment.client.get(f"/v1/jobs/{job_id}/artifacts/{name}")
    assert response.status_code == 200, response.text
    return response
