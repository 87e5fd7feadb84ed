"""Migration 0003 on rows that were there before it: every API key gets a webhook secret
and every job its method label, on both databases."""

from __future__ import annotations

from alembic import command
from sqlalchemy import text

from store.db import make_engine
from store.migrate import alembic_config, upgrade_to_head
from tests.store.test_migrations import empty_database, schema_differences  # noqa: F401


def test_keys_get_a_webhook_secret_and_jobs_a_method(empty_database: str) -> None:  # noqa: F811
    command.upgrade(alembic_config(empty_database), "0002")
    engine = make_engine(empty_database)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO tenants (id, name, created_at, submissions) "
                    "VALUES ('ten_a', 'a', CURRENT_TIMESTAMP, 0)"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO api_keys (id, tenant_id, name, prefix, secret_sha256, "
                    "is_admin, created_at) VALUES ('key_a', 'ten_a', 'k', 'sqz_', :sha, "
                    "false, CURRENT_TIMESTAMP)"
                ),
                {"sha": "0" * 64},
            )
            connection.execute(
                text(
                    "INSERT INTO jobs (id, tenant_id, created_at, updated_at, state, spec, "
                    "queue, progress, request_sha256, attempt, cancel_requested) VALUES "
                    "('job_a', 'ten_a', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 'queued', :spec, "
                    "'cpu', 0, 'x', 0, false)"
                ),
                {"spec": '{"steps": [{"method": "prune"}, {"method": "quantize"}]}'},
            )
        upgrade_to_head(empty_database)
        with engine.connect() as connection:
            method = connection.execute(text("SELECT method FROM jobs")).scalar_one()
            secret = connection.execute(text("SELECT webhook_secret FROM api_keys")).scalar_one()
        assert method == "prune+quantize"
        assert secret.startswith("whsec_") and len(secret) > 30
        command.downgrade(alembic_config(empty_database), "0002")
        upgrade_to_head(empty_database)
        assert schema_differences(engine) == []
    finally:
        engine.dispose()
