"""Where searches keep their trials: a SQLite file of its own in the embedded profile,
the service's PostgreSQL database in a schema of its own in the deployment."""

from __future__ import annotations

from pathlib import Path

import optuna
import psycopg
import pytest
from sqlalchemy import make_url

from service.settings import Settings
from store.migrate import upgrade_to_head
from worker.search_storage import SCHEMA, prepare_search_storage, search_storage_url, search_store


def test_the_embedded_profile_keeps_trials_in_a_sqlite_file_of_their_own(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, heartbeat_s=1.5, lease_s=4.0)
    url = prepare_search_storage(settings)

    assert url == f"sqlite:///{(tmp_path / 'search.db').resolve()}?timeout=60"
    with (tmp_path / "search.db").open("rb") as handle:
        header = handle.read(20)
    assert header[18:20] == b"\x02\x02"  # WAL mode, kept by the file
    store = search_store(settings, "job_1")
    assert (store.url, store.study_prefix, store.heartbeat_s, store.grace_s) == (url, "job_1", 2, 4)
    optuna.create_study(storage=url, study_name="s")  # Optuna's tables are there


def test_postgres_keeps_trials_in_the_optuna_schema_of_the_service_database(
    postgres_url: str, tmp_path: Path
) -> None:
    upgrade_to_head(postgres_url)  # the service's own tables and alembic_version
    settings = Settings(data_dir=tmp_path, database_url=postgres_url)
    url = prepare_search_storage(settings)
    assert url is not None and search_storage_url(settings) == url
    assert make_url(url).query["options"] == f"-csearch_path={SCHEMA}"

    optuna.create_study(storage=url, study_name=f"pg-{tmp_path.name}")
    dsn = make_url(postgres_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as connection:
        tables = connection.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_name IN ('studies', 'trials', 'alembic_version')"
        ).fetchall()
    schemas = {
        name: {schema for schema, table in tables if table == name}
        for name in ("studies", "trials")
    }
    assert schemas == {"studies": {SCHEMA}, "trials": {SCHEMA}}
    # Optuna's alembic_version lives beside its tables, not over the service's
    assert (SCHEMA, "alembic_version") in tables and ("public", "alembic_version") in tables


@pytest.mark.parametrize("url", ["mysql+pymysql://u@h/db"])
def test_an_unknown_database_keeps_searches_in_memory(url: str, tmp_path: Path) -> None:
    assert search_storage_url(Settings(data_dir=tmp_path, database_url=url)) is None
