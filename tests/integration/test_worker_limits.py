"""Limits on real worker processes: a job past its time limit or its memory ceiling fails
with a clear code, a job stuck in native code is cancelled at once, and the worker process
lives on."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import DigitsFiles
from tests.factories import endless_loop_onnx, memory_hog_onnx
from tests.integration.conftest import DeploymentFactory
from tests.services import wait_for

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


def test_a_job_stuck_in_native_code_is_cancelled_within_seconds_and_the_worker_goes_on(
    deploy: DeploymentFactory, digits_files: DigitsFiles, tmp_path: Path
) -> None:
    deployment = deploy()
    worker = deployment.start_worker()
    spec = deployment.upload_digits(digits_files)
    # a Loop of 10^18 iterations, its trip count computed from the input
    endless = endless_loop_onnx(tmp_path / "endless.onnx")
    stuck = deployment.submit({**spec, "model_id": deployment.upload("/v1/models", endless)})
    assert wait_for(lambda: deployment.get(stuck)["state"] == "running", 120, 0.2)
    time.sleep(2.0)  # inside the measurement's ONNX Runtime call by now

    cancelled_at = time.monotonic()
    assert deployment.client.post(f"{stuck}/cancel").status_code == 202
    job = deployment.wait_final(stuck, timeout_s=30)

    assert time.monotonic() - cancelled_at < 15
    assert (job["state"], job["error"]["code"]) == ("cancelled", "cancelled")
    assert job["attempt"] == 1
    assert worker.process is not None and worker.process.poll() is None
    following = deployment.wait_final(deployment.submit(spec), timeout_s=180)
    assert following["state"] == "succeeded", following["error"]


def test_a_job_past_its_memory_ceiling_fails_with_its_peak_and_is_not_retried(
    deploy: DeploymentFactory, digits_files: DigitsFiles, tmp_path: Path
) -> None:
    ceiling = 128 * 1024 * 1024
    deployment = deploy(job_memory_limit_bytes=ceiling)
    worker = deployment.start_worker()
    spec = deployment.upload_digits(digits_files)
    hog = memory_hog_onnx(tmp_path / "hog.onnx", floats=100_000_000)  # 400 MB per run
    hungry = deployment.submit({**spec, "model_id": deployment.upload("/v1/models", hog)})

    job = deployment.wait_final(hungry, timeout_s=180)

    assert (job["state"], job["error"]["code"]) == ("failed", "memory_limit_exceeded"), job
    assert "peak resident memory" in job["error"]["message"]
    events = deployment.get(f"{hungry}/events?limit=1000")["items"]
    [final] = [event for event in events if event["kind"] == "failed"]
    assert final["data"]["limit_bytes"] == ceiling
    # refused by the child's RLIMIT_DATA, or killed by the parent's watch of its RSS
    assert final["data"]["peak_rss_bytes"] > 0
    assert str(final["data"]["peak_rss_bytes"]) in job["error"]["message"]
    time.sleep(3 * deployment.settings.reaper_interval_s + deployment.settings.lease_s)
    again = deployment.get(hungry)
    assert (again["state"], again["attempt"]) == ("failed", 1)
    assert worker.process is not None and worker.process.poll() is None
