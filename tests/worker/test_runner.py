"""The job runner (the service behind the Celery task), called in-process."""

from __future__ import annotations

import threading

import onnxruntime as ort
import pytest

from store import jobs
from store.db import transaction
from tests.services import wait_for
from tests.worker.conftest import StoreFactory
from worker.runner import JobRunner


def runner_for(store: object) -> JobRunner:
    return JobRunner(store.settings, store.sessions, store.blobs)  # type: ignore[attr-defined]


def test_a_queued_job_succeeds_with_one_set_of_artifacts(make_store: StoreFactory) -> None:
    store = make_store()
    job_id = store.submit()
    assert runner_for(store).run(job_id) == "succeeded"
    job = store.job(job_id)
    assert (job.state, job.progress, job.attempt) == ("succeeded", 1.0, 1)
    artifacts = {a.name: a for a in store.artifacts(job_id)}
    assert set(artifacts) == {"model.onnx", "report.json", "report.html", "manifest.json"}
    model_path = store.blobs.path(artifacts["model.onnx"].sha256)
    ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    assert job.result["final"]["size_bytes"] == artifacts["model.onnx"].size_bytes
    assert job.result["final"]["size_bytes"] < job.result["original"]["size_bytes"]


def test_progress_and_events_are_written_while_the_job_runs(make_store: StoreFactory) -> None:
    store = make_store()
    job_id = store.submit()
    runner_for(store).run(job_id)
    events = store.events(job_id)
    kinds = [event.kind for event in events]
    assert kinds[0] == "created" and kinds[1] == "started" and kinds[-1] == "succeeded"
    progress = [event.data["progress"] for event in events if event.kind == "progress"]
    assert len(progress) >= 3
    assert progress == sorted(progress)


def test_a_second_message_for_the_same_job_is_skipped(make_store: StoreFactory) -> None:
    store = make_store()
    job_id = store.submit()
    runner = runner_for(store)
    assert runner.run(job_id) == "succeeded"
    assert runner.run(job_id) == "skipped"
    assert store.job(job_id).attempt == 1
    assert len(store.artifacts(job_id)) == 4  # model, report.json, report.html, manifest


def test_a_job_the_engine_cannot_run_fails_with_a_reason(make_store: StoreFactory) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    store = make_store()
    job_id = store.submit(device="cuda")
    assert runner_for(store).run(job_id) == "failed"
    job = store.job(job_id)
    assert job.error_code == "device_unavailable"
    assert "CUDA" in job.error_message
    assert store.artifacts(job_id) == []


def test_a_missing_target_is_reported_not_hidden(make_store: StoreFactory) -> None:
    store = make_store()
    job_id = store.submit(targets={"max_size_bytes": 1000})
    assert runner_for(store).run(job_id) == "succeeded"
    verdict = store.job(job_id).result["verdict"]
    assert verdict["targets_met"] is False
    [check] = [c for c in verdict["checks"] if c["target"] == "max_size_bytes"]
    assert not check["met"]
    assert check["measured"] > 1000


def test_cancelling_a_running_job_stops_it(make_store: StoreFactory) -> None:
    # Many timing runs make the job last long enough to be cancelled mid-way.
    store = make_store(measure_runs=400, heartbeat_s=0.2, lease_s=5)
    job_id = store.submit(batch_size=256)
    outcome: list[str] = []
    thread = threading.Thread(target=lambda: outcome.append(runner_for(store).run(job_id)))
    thread.start()
    assert wait_for(lambda: store.job(job_id).state == "running", timeout_s=30)
    with transaction(store.sessions) as session:
        jobs.request_cancel(session, job_id, tenant_id=None)
    thread.join(timeout=60)
    assert outcome == ["cancelled"]
    job = store.job(job_id)
    assert job.state == "cancelled" and job.progress < 1.0
    assert store.artifacts(job_id) == []
