"""Where architecture searches keep their trials: an Optuna storage URL from settings.

- Embedded profile (SQLite): a file of its own, `<data_dir>/search.db`. Optuna versions
  its tables with its own Alembic `alembic_version` table, which would collide with the
  service's in one SQLite file (SQLite has no schemas). WAL and a busy timeout let the
  workers sharing a search write to it at once.
- PostgreSQL: the service's own database, in the schema `optuna` (Optuna's connections
  get `search_path=optuna`), so trials are as durable and as shared as the jobs, with
  no other server to run.

The storage is prepared (schema, WAL, Optuna's tables) once per process, on first use.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time

from sqlalchemy import create_engine, make_url, text

from core.context import SearchStore
from core.search.study import ensure_storage
from service.settings import Settings

log = logging.getLogger(__name__)

SCHEMA = "optuna"
SQLITE_FILE = "search.db"
SQLITE_TIMEOUT_S = 60
_PREPARE_TRIES = 3

_prepared: set[str] = set()
_lock = threading.Lock()


def search_storage_url(settings: Settings) -> str | None:
    """The Optuna storage URL for these settings; None for a database this does not
    know how to share (searches then keep their trials in memory)."""
    database = make_url(settings.resolved_database_url)
    backend = database.get_backend_name()
    if backend == "sqlite":
        path = (settings.data_dir / SQLITE_FILE).resolve()
        return f"sqlite:///{path}?timeout={SQLITE_TIMEOUT_S}"
    if backend == "postgresql":
        with_schema = database.update_query_dict({"options": f"-csearch_path={SCHEMA}"})
        return with_schema.render_as_string(hide_password=False)
    return None


def prepare_search_storage(settings: Settings) -> str | None:
    """The storage URL, with its schema (PostgreSQL) or file (SQLite, in WAL mode) and
    Optuna's tables created; workers starting together may race to create them, so
    each step is retried."""
    url = search_storage_url(settings)
    if url is None:
        log.warning(
            "searches keep their trials in memory: %s is not supported",
            make_url(settings.resolved_database_url).get_backend_name(),
        )
        return None
    with _lock:
        if url in _prepared:
            return url
        for attempt in range(1, _PREPARE_TRIES + 1):
            try:
                _prepare(settings, url)
                break
            except Exception:
                if attempt == _PREPARE_TRIES:
                    raise
                log.warning("preparing the search storage failed; retrying", exc_info=True)
                time.sleep(0.5 * attempt)
        _prepared.add(url)
    return url


def _prepare(settings: Settings, url: str) -> None:
    if make_url(url).get_backend_name() == "sqlite":
        path = (settings.data_dir / SQLITE_FILE).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path, timeout=SQLITE_TIMEOUT_S) as connection:
            connection.execute("PRAGMA journal_mode=WAL")  # kept by the file
    else:
        engine = create_engine(settings.resolved_database_url)
        try:
            with engine.begin() as connection:
                connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{SCHEMA}"'))
        finally:
            engine.dispose()
    ensure_storage(url)


def search_store(settings: Settings, job_id: str) -> SearchStore:
    """Where the job's searches keep their trials: studies named after the job, trial
    heartbeats as often as the job's lease is renewed, and a trial silent for a lease
    period taken for dead (the same rule that declares the job's worker dead)."""
    return SearchStore(
        url=prepare_search_storage(settings),
        study_prefix=job_id,
        heartbeat_s=max(1, math.ceil(settings.heartbeat_s)),
        grace_s=max(2, math.ceil(settings.lease_s)),
    )
