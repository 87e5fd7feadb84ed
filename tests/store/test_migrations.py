"""The Alembic migrations build exactly the schema the tables declare, on both databases,
and an upgrade keeps the rows that were there before."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, text

from store.db import make_engine
from store.migrate import alembic_config, upgrade_to_head
from store.tables import Base
from tests import services


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database no test has touched (PostgreSQL: created for this test, then dropped)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrations.db'}"
        return
    try:
        name = services.create_database()
    except Exception as error:
        services.service_unavailable("PostgreSQL", error)
    try:
        yield services.postgres_url_for(name)
    finally:
        services.drop_database(name)


def schema_differences(engine: Engine) -> list[object]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def test_the_migrated_schema_is_the_declared_schema(empty_database: str) -> None:
    upgrade_to_head(empty_database)
    engine = make_engine(empty_database)
    try:
        assert schema_differences(engine) == []
    finally:
        engine.dispose()


def test_rows_from_before_tenants_belong_to_a_default_tenant_after_the_upgrade(
    empty_database: str,
) -> None:
    command.upgrade(alembic_config(empty_database), "0001")
    engine = make_engine(empty_database)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO models (id, created_at, filename, sha256, size_bytes, info) "
                    "VALUES ('mdl_old', CURRENT_TIMESTAMP, 'm.onnx', :sha, 1, '{}')"
                ),
                {"sha": "0" * 64},
            )
        upgrade_to_head(empty_database)
        with engine.connect() as connection:
            tenant = connection.execute(text("SELECT tenant_id FROM models")).scalar_one()
            name = connection.execute(
                text("SELECT name FROM tenants WHERE id = :id"), {"id": tenant}
            ).scalar_one()
        assert name == "default"
        command.downgrade(alembic_config(empty_database), "0001")
        upgrade_to_head(empty_database)
        assert schema_differences(engine) == []
    finally:
        engine.dispose()
