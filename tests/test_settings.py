"""Settings fail fast on inconsistent limits and default to the embedded profile."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings
from worker.celery_app import make_celery


def test_defaults_are_the_embedded_profile(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.resolved_database_url.startswith("sqlite:///")
    assert settings.uses_filesystem_broker


def test_environment_selects_postgres_and_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQUEEZE_DATABASE_URL", "postgresql+psycopg://u@h/db")
    monkeypatch.setenv("SQUEEZE_BROKER_URL", "redis://h:6379/0")
    settings = Settings()
    assert settings.resolved_database_url == "postgresql+psycopg://u@h/db"
    assert not settings.uses_filesystem_broker


def test_visibility_timeout_must_exceed_the_hard_time_limit() -> None:
    with pytest.raises(ValidationError, match="visibility"):
        Settings(
            task_soft_time_limit_s=3000,
            task_hard_time_limit_s=7200,
            broker_visibility_timeout_s=3600,
        )


def test_soft_limit_must_be_below_hard_limit() -> None:
    with pytest.raises(ValidationError, match="soft"):
        Settings(task_soft_time_limit_s=600, task_hard_time_limit_s=600)


def test_celery_is_configured_for_no_lost_jobs() -> None:
    settings = Settings(broker_url="redis://127.0.0.1:6379/0")
    conf = make_celery(settings).conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit
    assert conf.task_soft_time_limit < conf.task_time_limit
    assert {queue.name for queue in conf.task_queues} == {"cpu", "gpu"}


def test_a_worker_beats_more_often_than_it_is_declared_dead() -> None:
    with pytest.raises(ValidationError, match="worker_heartbeat_s"):
        Settings(worker_heartbeat_s=60, worker_dead_after_s=60)


def test_jobs_no_live_worker_serves_are_refused_by_default() -> None:
    assert Settings().absent_worker_policy == "refuse"
    assert Settings().ready_requires_workers_for == []


def test_queues_readiness_requires_are_read_from_the_environment_as_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SQUEEZE_READY_REQUIRES_WORKERS_FOR", '["cpu"]')
    assert Settings().ready_requires_workers_for == ["cpu"]


def test_the_object_store_needs_a_bucket() -> None:
    with pytest.raises(ValidationError, match="s3_bucket"):
        Settings(blob_store="s3")


def test_environment_selects_the_object_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQUEEZE_BLOB_STORE", "s3")
    monkeypatch.setenv("SQUEEZE_S3_BUCKET", "squeeze")
    monkeypatch.setenv("SQUEEZE_S3_ENDPOINT_URL", "http://s3:8333")
    monkeypatch.setenv("SQUEEZE_S3_SECRET_ACCESS_KEY", "secret")
    settings = Settings()
    assert (settings.blob_store, settings.s3_bucket) == ("s3", "squeeze")
    assert settings.s3_secret_access_key is not None
    assert settings.s3_secret_access_key.get_secret_value() == "secret"
    assert Settings(blob_store="local").blob_store == "local"
