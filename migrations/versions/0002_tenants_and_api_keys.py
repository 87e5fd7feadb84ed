"""tenants and API keys; every model, dataset and job belongs to a tenant

Rows that exist before this revision are given to a tenant named "default" (created
only when there are such rows), so an upgraded embedded install keeps its history.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 10:40:00
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT_TENANT_ID = "ten_default"
OWNED_TABLES = ("models", "datasets", "jobs")
# 0001 declared the job's idempotency key unique without naming the constraint; SQLite
# reflects it unnamed, so batch mode needs a naming convention to find it.
SQLITE_NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("quota_storage_bytes", sa.BigInteger(), nullable=True),
        sa.Column("quota_concurrent_jobs", sa.Integer(), nullable=True),
        sa.Column("submissions", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("secret_sha256", sa.String(length=64), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("secret_sha256"),
    )
    op.create_index("ix_api_keys_tenant_id", "api_keys", ["tenant_id"])

    bind = op.get_bind()
    existing = sum(
        bind.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar_one()
        for table in OWNED_TABLES
    )
    if existing:
        bind.execute(
            sa.text(
                "INSERT INTO tenants (id, name, created_at, submissions) "
                "VALUES (:id, 'default', :now, 0)"
            ),
            {"id": DEFAULT_TENANT_ID, "now": datetime.now(UTC)},
        )

    sqlite = bind.dialect.name == "sqlite"
    for table in OWNED_TABLES:
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(sa.Column("tenant_id", sa.String(length=40), nullable=True))
        bind.execute(sa.text(f"UPDATE {table} SET tenant_id = :id"), {"id": DEFAULT_TENANT_ID})
        with op.batch_alter_table(
            table, naming_convention=SQLITE_NAMING if sqlite else None
        ) as batch_op:
            batch_op.alter_column("tenant_id", existing_type=sa.String(length=40), nullable=False)
            batch_op.create_foreign_key(f"fk_{table}_tenant_id", "tenants", ["tenant_id"], ["id"])
            if table == "jobs":
                batch_op.drop_constraint(
                    "uq_jobs_idempotency_key" if sqlite else "jobs_idempotency_key_key",
                    type_="unique",
                )
                batch_op.create_unique_constraint(
                    "uq_jobs_tenant_idempotency_key", ["tenant_id", "idempotency_key"]
                )
                batch_op.create_index("ix_jobs_tenant_created", ["tenant_id", "created_at"])
            else:
                batch_op.create_index(f"ix_{table}_tenant_id", ["tenant_id"])


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for table in OWNED_TABLES:
        with op.batch_alter_table(table) as batch_op:
            if table == "jobs":
                batch_op.drop_index("ix_jobs_tenant_created")
                batch_op.drop_constraint("uq_jobs_tenant_idempotency_key", type_="unique")
                batch_op.create_unique_constraint(
                    "uq_jobs_idempotency_key" if sqlite else "jobs_idempotency_key_key",
                    ["idempotency_key"],
                )
            else:
                batch_op.drop_index(f"ix_{table}_tenant_id")
            batch_op.drop_constraint(f"fk_{table}_tenant_id", type_="foreignkey")
            batch_op.drop_column("tenant_id")
    op.drop_index("ix_api_keys_tenant_id", table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("tenants")
