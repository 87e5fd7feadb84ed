"""Limits on real worker processes: a job past its time limit fails with a clear code and
the worker process lives on."""

from __future__ import annotations

import pytest

from tests.conftest import DigitsFiles
from tests.integration.conftest import DeploymentFactory

pytestmark = pytest.mark.slow


def test_a_job_past_its_time_limit_fails_with_a_clear_code_and_the_worker_lives_on(
    deploy: DeploymentFactory, digits_files: DigitsFiles
) -> None:
    # Thousands of timing runs at a large batch take far longer than the 3 s allowed.
    deployment = deploy(task_soft_time_limit_s=3, task_hard_time_limit_s=30, measure_runs=5000)
    worker = deployment.start_worker()
    spec = deployment.upload_digits(digits_files)
    slow = deployment.submit({**spec, "batch_size": 256})

    job = deployment.wait_final(slow, timeout_s=120)

    assert job["state"] == "failed"
    assert job["error"]["code"] == "time_limit_exceeded", job["error"]
    assert "3 s" in job["error"]["message"]
    assert worker.process is not None and worker.process.poll() is None
