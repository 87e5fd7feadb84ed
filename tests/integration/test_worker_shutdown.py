"""A worker told to stop (SIGTERM to its main process, as `docker stop` does) hands its
running job back to the queue and exits promptly; another worker finishes the job."""

from __future__ import annotations

import time

import pytest

from tests.conftest import DigitsFiles
from tests.integration.conftest import DeploymentFactory
from tests.services import wait_for

pytestmark = pytest.mark.slow


def test_a_worker_shutting_down_hands_its_running_job_to_another(
    deploy: DeploymentFactory, digits_files: DigitsFiles
) -> None:
    # Many timing runs keep the job busy long enough to stop the worker in the middle.
    deployment = deploy(measure_runs=600)
    first = deployment.start_worker()
    spec = deployment.upload_digits(digits_files)
    job_url = deployment.submit({**spec, "batch_size": 256})
    assert wait_for(lambda: deployment.get(job_url)["progress"] > 0, timeout_s=120), (
        deployment.worker_logs()
    )
    assert deployment.get(job_url)["state"] == "running"

    asked = time.monotonic()
    first.terminate()
    assert first.process is not None
    first.process.wait(timeout=90)
    assert time.monotonic() - asked < 90
    job = deployment.get(job_url)
    assert job["state"] == "queued", deployment.worker_logs()
    kinds = [event["kind"] for event in deployment.get(f"{job_url}/events?limit=1000")["items"]]
    assert kinds[-1] == "released"

    deployment.start_worker()
    job = deployment.wait_final(job_url, timeout_s=240)
    assert job["state"] == "succeeded", job["error"]
    assert job["attempt"] == 2
