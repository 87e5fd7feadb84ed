"""Alembic environment: the URL comes from the caller (store.migrate) or the settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from service.settings import get_settings
from store.db import make_engine
from store.tables import Base

target_metadata = Base.metadata
# An arbitrary constant: PostgreSQL advisory lock id serialising concurrent upgrades
# (the API and every worker upgrade on start).
MIGRATION_LOCK_ID = 7_362_941


def run_migrations_online() -> None:
    url = context.config.get_main_option("sqlalchemy.url") or get_settings().resolved_database_url
    engine = make_engine(url)
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text(f"SELECT pg_advisory_lock({MIGRATION_LOCK_ID})"))
            connection.commit()
        try:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=connection.dialect.name == "sqlite",
            )
            with context.begin_transaction():
                context.run_migrations()
        finally:
            if connection.dialect.name == "postgresql":
                connection.execute(text(f"SELECT pg_advisory_unlock({MIGRATION_LOCK_ID})"))
                connection.commit()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run against a database")
run_migrations_online()
