"""The broker loses or doubles messages; the database still runs every job exactly once.

Real worker processes on both profiles: a message delivered twice (to two workers) runs
its job once; and, on the deployment profile, a Redis server restarted with jobs queued
(their messages gone with it) still sees every job finish, the worker's reaper sending
again what the database says is queued.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import DigitsFiles
from tests.integration.conftest import DeploymentFactory
from tests.services import wait_for
from worker.enqueue import JobQueue

pytestmark = pytest.mark.slow


def test_a_message_delivered_to_two_workers_runs_its_job_once(
    deploy: DeploymentFactory, digits_files: DigitsFiles
) -> None:
    deployment = deploy()
    deployment.start_worker()
    deployment.start_worker()
    job_url = deployment.submit(deployment.upload_digits(digits_files))
    job_id = job_url.rsplit("/", 1)[1]
    JobQueue(deployment.settings).send(job_id, deployment.settings.queue_cpu)  # a duplicate

    job = deployment.wait_final(job_url)

    assert job["state"] == "succeeded", job["error"]
    assert job["attempt"] == 1
    kinds = [event["kind"] for event in deployment.get(f"{job_url}/events?limit=1000")["items"]]
    assert kinds.count("started") == 1 and kinds.count("succeeded") == 1
    names = [item["name"] for item in deployment.get(f"{job_url}/artifacts")["items"]]
    assert len(names) == len(set(names))  # one set of artifacts
    assert {"manifest.json", "model.onnx", "report.json"} <= set(names)


class PrivateRedis:
    """A redis-server of this test's own (no persistence), so it can be restarted."""

    def __init__(self, log: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no"],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        assert wait_for(lambda: _pings(client), timeout_s=10)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis.log")
    try:
        server.start()
    except FileNotFoundError:
        pytest.skip("redis-server is not installed")
    yield server
    if server.process is not None and server.process.poll() is None:
        server.kill()


def test_jobs_queued_when_redis_restarts_all_finish(
    request: pytest.FixtureRequest,
    deploy: DeploymentFactory,
    digits_files: DigitsFiles,
    private_redis: PrivateRedis,
) -> None:
    if "postgres_redis" not in request.node.callspec.id:
        pytest.skip("the embedded profile has no broker server to restart")
    deployment = deploy(broker_url=private_redis.url, requeue_queued_after_s=2.0)
    spec = deployment.upload_digits(digits_files)
    queued = [deployment.submit(spec) for _ in range(2)]  # no worker yet: they wait in Redis

    private_redis.kill()  # the messages are gone with it
    during_outage = deployment.submit(spec)  # committed and accepted; the send fails
    private_redis.start()
    deployment.start_worker()

    for job_url in [*queued, during_outage]:
        job = deployment.wait_final(job_url, timeout_s=240)
        assert job["state"] == "succeeded", job["error"]
        assert job["attempt"] == 1
