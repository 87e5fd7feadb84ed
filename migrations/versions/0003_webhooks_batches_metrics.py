"""webhooks (per-key secrets, deliveries), batches, and the job columns they need

Every API key gets a webhook secret; keys made before this revision get a random one
(their owners learn it by rotating it: POST /v1/api-keys/{id}/webhook-secret). Jobs
remember the key that submitted them, their webhook URL, their batch and their method
label ("prune+quantize"), which is filled in for the jobs already there.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 09:00:00
"""

import json
import secrets
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WEBHOOK_SECRET_PREFIX = "whsec_"


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("webhook_url", sa.String(length=2000), nullable=True),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("request_sha256", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name="fk_batches_tenant_id"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "tenant_id", "idempotency_key", name="uq_batches_tenant_idempotency_key"
        ),
    )
    op.create_index("ix_batches_tenant_created", "batches", ["tenant_id", "created_at"])

    bind = op.get_bind()
    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.add_column(sa.Column("webhook_secret", sa.String(length=64), nullable=True))
    for (key_id,) in bind.execute(sa.text("SELECT id FROM api_keys")).all():
        bind.execute(
            sa.text("UPDATE api_keys SET webhook_secret = :secret WHERE id = :id"),
            {"secret": WEBHOOK_SECRET_PREFIX + secrets.token_urlsafe(24), "id": key_id},
        )
    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.alter_column("webhook_secret", existing_type=sa.String(length=64), nullable=False)

    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("api_key_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("webhook_url", sa.String(length=2000), nullable=True))
        batch_op.add_column(sa.Column("batch_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("method", sa.String(length=200), nullable=True))
        batch_op.create_foreign_key("fk_jobs_api_key_id", "api_keys", ["api_key_id"], ["id"])
        batch_op.create_foreign_key("fk_jobs_batch_id", "batches", ["batch_id"], ["id"])
        batch_op.create_index("ix_jobs_batch_id", ["batch_id"])
    for job_id, spec in bind.execute(sa.text("SELECT id, spec FROM jobs")).all():
        bind.execute(
            sa.text("UPDATE jobs SET method = :method WHERE id = :id"),
            {"method": _method_label(spec), "id": job_id},
        )

    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", name="uq_webhook_deliveries_job_id"),
    )
    op.create_index(
        "ix_webhook_deliveries_state_due", "webhook_deliveries", ["state", "next_attempt_at"]
    )


def _method_label(spec: object) -> str | None:
    if isinstance(spec, str):  # SQLite hands JSON back as text
        spec = json.loads(spec)
    if not isinstance(spec, dict):
        return None
    methods = [str(step.get("method")) for step in spec.get("steps", []) if isinstance(step, dict)]
    return "+".join(methods)[:200] or None


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_state_due", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_index("ix_jobs_batch_id")
        batch_op.drop_constraint("fk_jobs_batch_id", type_="foreignkey")
        batch_op.drop_constraint("fk_jobs_api_key_id", type_="foreignkey")
        batch_op.drop_column("method")
        batch_op.drop_column("batch_id")
        batch_op.drop_column("webhook_url")
        batch_op.drop_column("api_key_id")
    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.drop_column("webhook_secret")
    op.drop_index("ix_batches_tenant_created", table_name="batches")
    op.drop_table("batches")
