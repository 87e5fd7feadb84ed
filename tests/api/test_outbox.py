"""Jobs accepted while the broker is down: their messages wait in the outbox (written
with the job, in one transaction) and are sent within seconds of the broker answering
again, not by the reaper minutes later; `/readyz` and `/metrics` show the backlog.

The broker here is a Redis this test starts on a free port (the shared one is never
stopped): first nothing listens there, then `redis-server --port N` does."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import delete, func, select

from store.tables import JobOutboxRow, JobRow
from tests import services
from tests.api.conftest import Api, ApiFactory
from tests.api.test_metrics import scrape


@pytest.fixture
def broker_port() -> Iterator[int]:
    port = services.free_port()
    yield port


def start_redis(port: int, log_dir: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
         "--bind", "127.0.0.1", "--dir", str(log_dir)],
        stdout=(log_dir / "redis.log").open("wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    client = redis.Redis(port=port, socket_connect_timeout=1)
    assert services.wait_for(lambda: _pings(client), timeout_s=10), "redis-server did not start"
    return process


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def pending(api: Api) -> int:
    sessions = api.client.app.state.services.sessions  # type: ignore[attr-defined]
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(JobOutboxRow)) or 0)


@pytest.fixture
def outage_api(
    make_api: ApiFactory, postgres_url: str, broker_port: int
) -> Iterator[Api]:
    """The deployment profile (PostgreSQL + Redis) with its broker down."""
    api = make_api(
        database_url=postgres_url, broker_url=f"redis://127.0.0.1:{broker_port}/0"
    )
    yield api
    sessions = api.client.app.state.services.sessions  # type: ignore[attr-defined]
    with sessions.begin() as session:  # the session database is shared
        session.execute(delete(JobRow).where(JobRow.queue == api.settings.queue_cpu))


def test_a_job_accepted_during_a_broker_outage_is_sent_within_seconds_of_its_return(
    outage_api: Api, broker_port: int, model_file: Path, dataset_file: Path, tmp_path: Path
) -> None:
    api = outage_api
    spec = {
        "model_id": api.model_id(model_file),
        "eval_dataset_id": api.dataset_id(dataset_file),
        "steps": [{"method": "quantize", "mode": "dynamic"}],
    }
    accepted = api.submit(spec)
    assert accepted.status_code == 202, accepted.text  # nothing is lost: the row is there
    job_id = accepted.json()["id"]
    assert pending(api) == 1

    down = api.client.get("/readyz")
    assert down.status_code == 503
    assert down.json()["checks"]["broker"].startswith("failed")
    assert down.json()["outbox"]["pending"] == 1
    assert scrape(api)[("squeeze_outbox_pending", ())] == 1

    server = start_redis(broker_port, tmp_path)
    try:
        back_at = time.monotonic()
        broker = redis.Redis(port=broker_port)
        queue = api.settings.queue_cpu
        assert services.wait_for(lambda: broker.llen(queue) == 1, timeout_s=15), (
            f"the held-back message was not sent (outbox: {pending(api)})"
        )
        sent_after_s = time.monotonic() - back_at
        assert sent_after_s < 10  # the API's outbox timer: every 2 s by default
        assert pending(api) == 0
        # the message is the job's run_job task, carrying its id
        assert job_id.encode() in broker.lindex(queue, 0)  # type: ignore[operator]

        ready = api.client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["outbox"] == {"pending": 0, "oldest_age_s": None}
        assert scrape(api)[("squeeze_outbox_pending", ())] == 0
    finally:
        server.terminate()
        server.wait(timeout=10)
