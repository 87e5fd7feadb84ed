"""Real Celery workers register what they can do, beat, die visibly, and the API acts on
it: jobs no live worker serves are refused, or wait and expire (both profiles)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import DigitsFiles
from tests.integration.conftest import Deployment, DeploymentFactory
from tests.services import WorkerProcess, wait_for

pytestmark = pytest.mark.slow

FAST_PRESENCE = {"worker_heartbeat_s": 0.5, "worker_dead_after_s": 3.0}


def workers_of(deployment: Deployment) -> list[dict[str, Any]]:
    """This deployment's workers (the PostgreSQL database is shared by the session's
    tests; each deployment has its own queue names)."""
    mine = {deployment.settings.queue_cpu, deployment.settings.queue_gpu}
    items: list[dict[str, Any]] = deployment.get("/v1/workers")["items"]
    return [item for item in items if mine & set(item["queues"])]


def wait_registered(deployment: Deployment, count: int = 1) -> list[dict[str, Any]]:
    registered = wait_for(lambda: sum(w["alive"] for w in workers_of(deployment)) >= count, 90, 0.5)
    assert registered, f"no worker registered; logs:\n{deployment.worker_logs()}"
    return workers_of(deployment)


def test_a_worker_registers_its_queues_runtimes_and_devices_and_beats(
    deploy: DeploymentFactory,
) -> None:
    deployment = deploy(**FAST_PRESENCE)
    deployment.start_worker()
    (worker,) = wait_registered(deployment)
    settings = deployment.settings
    assert worker["queues"] == sorted([settings.queue_cpu, settings.queue_gpu])
    assert worker["concurrency"] == 1
    assert worker["devices"] == ["cpu"] and worker["gpus"] == []
    assert worker["runtimes"] == {"onnxruntime": ["cpu"], "openvino": ["cpu"]}
    assert worker["version"] == "0.1.0"
    first_beat = worker["heartbeat_at"]
    assert wait_for(lambda: workers_of(deployment)[0]["heartbeat_at"] > first_beat, 10, 0.3)
    ready = deployment.get("/readyz")
    assert ready["workers"] == {settings.queue_cpu: 1, settings.queue_gpu: 1}
    assert ready["warnings"] == []


def test_a_killed_worker_turns_dead_and_readiness_says_its_queue_is_unserved(
    deploy: DeploymentFactory,
) -> None:
    deployment = deploy(**FAST_PRESENCE)
    worker = deployment.start_worker()
    wait_registered(deployment)
    worker.kill()
    assert wait_for(lambda: not workers_of(deployment)[0]["alive"], 15, 0.5)
    ready = deployment.get("/readyz")
    assert ready["workers"][deployment.settings.queue_cpu] == 0
    assert f"no live worker consumes queue '{deployment.settings.queue_cpu}'" in ready["warnings"]


def test_a_worker_stopped_cleanly_is_marked_stopped_at_once(deploy: DeploymentFactory) -> None:
    deployment = deploy(worker_heartbeat_s=0.5, worker_dead_after_s=600.0)
    worker = deployment.start_worker()
    wait_registered(deployment)
    worker.stop()
    (row,) = workers_of(deployment)
    assert row["stopped_at"] is not None and not row["alive"]


def test_with_the_check_on_a_cpu_job_runs_and_a_cuda_job_is_refused(
    deploy: DeploymentFactory, digits_files: DigitsFiles
) -> None:
    deployment = deploy(absent_worker_policy="refuse", **FAST_PRESENCE)
    spec = deployment.upload_digits(digits_files)
    refused = deployment.client.post("/v1/jobs", json=spec)
    assert refused.status_code == 422 and refused.json()["code"] == "no_worker_for_target"
    deployment.start_worker()
    wait_registered(deployment)
    job = deployment.wait_final(deployment.submit(spec))
    assert job["state"] == "succeeded", job
    cuda = deployment.client.post("/v1/jobs", json={**spec, "device": "cuda"})
    assert cuda.status_code == 422, cuda.text
    body = cuda.json()
    assert body["code"] == "no_worker_for_target"
    assert body["device"] == "cuda" and body["available"][0]["devices"] == ["cpu"]


def test_a_job_queued_for_an_absent_gpu_worker_expires_instead_of_being_resent(
    deploy: DeploymentFactory, digits_files: DigitsFiles
) -> None:
    deployment = deploy(absent_worker_policy="queue", absent_worker_expiry_s=2.0, **FAST_PRESENCE)
    settings = deployment.settings
    cpu_only = WorkerProcess(settings, deployment.tmp_path / "cpu.log", queues=[settings.queue_cpu])
    deployment.workers.append(cpu_only.start())
    wait_registered(deployment)
    spec = deployment.upload_digits(digits_files)
    url = deployment.submit({**spec, "device": "cuda"})
    job = deployment.wait_final(url, timeout_s=60)
    assert (job["state"], job["error"]["code"]) == ("failed", "no_worker_available"), job
    events = deployment.get(f"{url}/events")["items"]
    kinds = [event["kind"] for event in events]
    assert "waiting_for_worker" in kinds and "requeued" not in kinds
