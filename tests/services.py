"""Real services for tests: per-run PostgreSQL databases, Redis, and Celery worker processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import redis
from pydantic import SecretStr

from squeeze.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_ADMIN_DSN = os.environ.get(
    "SQUEEZE_TEST_POSTGRES_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)
REDIS_URL = os.environ.get("SQUEEZE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def service_unavailable(what: str, error: Exception) -> None:
    """In CI (SQUEEZE_REQUIRE_SERVICES=1) a missing server fails the run instead of skipping."""
    message = f"{what} is not reachable: {error}"
    if os.environ.get("SQUEEZE_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


def postgres_url_for(database: str) -> str:
    params = dict(part.split("=", 1) for part in POSTGRES_ADMIN_DSN.split())
    return (
        f"postgresql+psycopg://{params.get('user', 'postgres')}@{params.get('host', '127.0.0.1')}"
        f":{params.get('port', '5432')}/{database}"
    )


def create_database() -> str:
    """A fresh database for this test run: never the shared `test` database's tables."""
    name = f"squeeze_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True, connect_timeout=5) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(name: str) -> None:
    with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True, connect_timeout=5) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def ping_redis() -> None:
    redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()


def delete_redis_queues(queues: list[str]) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    for queue in queues:
        client.delete(queue)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process build exactly these settings."""
    env = {}
    for name, value in settings.model_dump().items():
        if value is None:  # unset: the child's default is None too
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        # pydantic-settings reads lists and dicts from the environment as JSON
        text = json.dumps(value) if isinstance(value, list | dict) else str(value)
        env[f"SQUEEZE_{name.upper()}"] = text
    return env


def fast_test_settings(data_dir: Path, **overrides: object) -> Settings:
    """Settings for tests: short leases and few timing runs; unique queue names per call."""
    suffix = uuid.uuid4().hex[:8]
    values: dict[str, object] = {
        "data_dir": data_dir,
        "queue_cpu": f"cpu-{suffix}",
        "queue_gpu": f"gpu-{suffix}",
        "lease_s": 4.0,
        "heartbeat_s": 1.0,
        "reaper_interval_s": 0.5,
        "requeue_queued_after_s": 30.0,
        "task_soft_time_limit_s": 240,
        "task_hard_time_limit_s": 300,
        "broker_visibility_timeout_s": 360,
        "measure_warmup_runs": 2,
        "measure_runs": 5,
        # workers start alongside the tests' API: a test that checks workers turns it on
        "absent_worker_policy": "off",
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@dataclass
class WorkerProcess:
    """A real `celery worker` child process (its own session, so a kill takes its pool too)."""

    settings: Settings
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    # the queues it consumes (default: the settings' cpu and gpu queues)
    queues: list[str] | None = None

    def start(self) -> WorkerProcess:
        env = {
            **os.environ,
            **settings_env(self.settings),
            **self.extra_env,
            "PYTHONPATH": str(ROOT),
        }
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker.main",
                "worker",
                "-Q",
                ",".join(self.queues or [self.settings.queue_cpu, self.settings.queue_gpu]),
                "--concurrency",
                "1",
                "--loglevel",
                "INFO",
                "--hostname",
                f"test-{uuid.uuid4().hex[:6]}@%h",
                "--without-mingle",
                "--without-gossip",
            ],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def kill(self) -> None:
        """SIGKILL the worker and its pool: no clean shutdown, no acknowledgement."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self) -> None:
        """SIGTERM to the worker's main process only, as `docker stop` or systemd send it
        (its pool processes hear about the shutdown from their parent)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGTERM)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a server a test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout_s: float, interval_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return condition()
