"""The deployment profile across hosts: the API on this machine and two Celery workers on
two other "hosts" (network namespaces of their own, tests/hosts.py), sharing nothing but
PostgreSQL, Redis and the S3 object store, each reached over its own link. A batch of
jobs is spread over both; one host is SIGKILLed mid-job; every job still finishes
exactly once, and every artifact downloads intact from the object store."""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from service.settings import Settings
from store.tables import JobRow
from tests.api.conftest import ADMIN_TOKEN
from tests.conftest import DigitsFiles
from tests.hosts import Host, NamespacesUnavailable, loopback_hosts, namespace_hosts
from tests.services import (
    ObjectStore,
    WorkerProcess,
    delete_redis_queues,
    fast_test_settings,
    wait_for,
)

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)

JOBS = 4
FINAL = {"succeeded", "failed", "cancelled"}
ARTIFACTS = ["manifest.json", "model.onnx", "report.html", "report.json"]


def moved(url: str, host: Host) -> str:
    """`url` (a server on this machine's loopback) as `host` must dial it."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    netloc = f"{host.server_ip}:{host.port_for(parts.port)}"
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture
def hosts() -> Iterator[list[Host]]:
    try:
        made = namespace_hosts(2)
    except NamespacesUnavailable as error:
        log.warning("no network namespaces here (%s): hosts share loopback", error)
        made = loopback_hosts(2)
    try:
        yield made
    finally:
        for host in made:
            host.remove()


def pids_of_children(pid: int) -> set[int]:
    children: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children.update(int(p) for p in (task / "children").read_text().split())
        except (FileNotFoundError, ValueError):
            continue
    return children


def test_jobs_spread_over_hosts_survive_a_host_dying_and_run_exactly_once(
    tmp_path: Path,
    hosts: list[Host],
    postgres_url: str,
    redis_url: str,
    object_store: ObjectStore,
    digits_files: DigitsFiles,
    record_property: Any,
) -> None:
    record_property("hosts", "network namespaces" if hosts[0].isolated else "loopback")
    prefix = f"multi-{uuid.uuid4().hex[:8]}/"
    # Enough timing runs that a job is still busy when its host is killed.
    common: dict[str, Any] = {"measure_runs": 400, "lease_s": 3.0, "heartbeat_s": 0.5}
    api_settings = fast_test_settings(
        tmp_path / "api",
        admin_api_key=ADMIN_TOKEN,
        database_url=postgres_url,
        broker_url=redis_url,
        **object_store.settings_overrides(prefix=prefix),
        **common,
    )
    workers = []
    for index, host in enumerate(hosts):
        host_settings = Settings(
            **{
                **api_settings.model_dump(),
                "data_dir": tmp_path / f"host-{index}",  # its own disk
                "admin_api_key": None,
                "database_url": moved(postgres_url, host),
                "broker_url": moved(redis_url, host),
                **object_store.settings_overrides(
                    prefix=prefix, host=host.server_ip, port=host.port_for(object_store.s3_port)
                ),
            }
        )
        workers.append(
            WorkerProcess(
                host_settings, tmp_path / f"host-{index}.log", command_prefix=host.command_prefix
            )
        )
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    client = TestClient(create_app(api_settings), headers=headers)
    client.__enter__()
    try:
        run_and_check(client, api_settings, workers, digits_files, tmp_path)
    finally:
        for worker in workers:
            worker.stop()
        client.__exit__(None, None, None)
        delete_redis_queues([api_settings.queue_cpu, api_settings.queue_gpu])


def run_and_check(
    client: TestClient,
    settings: Settings,
    workers: list[WorkerProcess],
    digits: DigitsFiles,
    tmp_path: Path,
) -> None:
    def upload(route: str, path: Path) -> str:
        with path.open("rb") as handle:
            response = client.post(route, files={"file": (path.name, handle)})
        assert response.status_code in (200, 201), response.text  # 200: reused
        return str(response.json()["id"])

    def job(job_id: str) -> dict[str, Any]:
        response = client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def logs() -> str:
        return "\n".join(worker.log()[-3000:] for worker in workers)

    spec = {
        "model_id": upload("/v1/models", digits.model),
        "calibration_dataset_id": upload("/v1/datasets", digits.calibration),
        "eval_dataset_id": upload("/v1/datasets", digits.evaluation),
        "steps": [{"method": "quantize", "mode": "static"}],
        "batch_size": 256,
    }
    for worker in workers:
        worker.start()
    job_ids = []
    for _ in range(JOBS):
        response = client.post("/v1/jobs", json=spec)
        assert response.status_code == 202, response.text
        job_ids.append(response.json()["id"])

    # Kill host 0 while it is in the middle of a job.
    victim = workers[0]
    assert victim.process is not None

    sessions = client.app.state.services.sessions  # type: ignore[attr-defined]

    def victim_busy() -> str | None:
        """A job that a pool process of host 0 is running and has made progress on."""
        children = pids_of_children(victim.process.pid)  # type: ignore[union-attr]
        with sessions() as session:
            running = session.execute(
                select(JobRow.id, JobRow.worker).where(
                    JobRow.id.in_(job_ids), JobRow.state == "running", JobRow.progress > 0
                )
            ).all()
        for job_id, worker in running:
            if int(str(worker).rsplit(":", 1)[-1]) in children:
                return str(job_id)
        return None

    assert wait_for(lambda: victim_busy() is not None, timeout_s=180, interval_s=0.3), logs()
    killed_job = victim_busy()
    victim.kill()
    assert killed_job is not None

    assert wait_for(lambda: all(job(j)["state"] in FINAL for j in job_ids), 600, 1.0), logs()

    started_on: dict[str, list[str]] = {}
    for job_id in job_ids:
        body = job(job_id)
        assert body["state"] == "succeeded", (body["error"], logs())
        events = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["items"]
        kinds = [event["kind"] for event in events]
        assert kinds.count("succeeded") == 1, kinds  # exactly once
        starts = [e["message"].rsplit(" on ", 1)[-1] for e in events if e["kind"] == "started"]
        assert len(starts) == body["attempt"]
        started_on[job_id] = starts
        # (a queued job waiting behind others is also sent again now and then: harmless)
        lost = [e for e in events if e["kind"] == "requeued" and "expired" in e["message"]]
        if job_id == killed_job:
            assert body["attempt"] == 2 and len(lost) == 1, kinds
        else:
            assert body["attempt"] == 1 and lost == [], kinds
        check_artifacts(client, job_id, body)

    # Both hosts took jobs: the batch was spread, and host 1 finished what host 0 dropped.
    host_pids = {pid for worker in workers if worker.process for pid in [worker.process.pid]}
    assert len(host_pids) == 2
    first_attempts = [starts[0] for starts in started_on.values()]
    assert len(set(first_attempts)) >= 2, started_on
    # Nothing on any disk but each host's own: the API's data dir holds no blob, and each
    # worker host's cache holds the inputs it fetched from the object store itself.
    api_blobs = [p for p in settings.blob_dir.rglob("*") if p.is_file()]
    assert api_blobs == []
    inputs = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (digits.model, digits.evaluation)}
    for index in range(len(workers)):
        cached = {p.name for p in (tmp_path / f"host-{index}" / "blob-cache").glob("??/*")}
        assert inputs <= cached, (index, cached)


def check_artifacts(client: TestClient, job_id: str, body: dict[str, Any]) -> None:
    """One attempt's artifacts, each downloadable with the sha256 it is listed with; the
    report is the succeeded attempt's (the result written with the artifact rows)."""
    items = client.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]
    assert sorted(item["name"] for item in items) == ARTIFACTS
    for item in items:
        response = client.get(f"/v1/jobs/{job_id}/artifacts/{item['name']}")
        assert response.status_code == 200, response.text
        assert hashlib.sha256(response.content).hexdigest() == item["sha256"]
    report = client.get(f"/v1/jobs/{job_id}/artifacts/report.json").json()
    assert report["final"] == body["result"]["final"]
    assert report["manifest"] == body["result"]["manifest"]
