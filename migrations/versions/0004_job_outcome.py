"""job outcome: what a final job came to, distinct from its state

`jobs.outcome` is improved / unchanged / targets_missed for a success (the verdict's),
failed or cancelled otherwise. Jobs already final get `failed` or `cancelled`; successes
recorded before outcomes existed keep NULL (their verdict cannot tell improved from
unchanged, and guessing would be dishonest).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("outcome", sa.String(length=20), nullable=True))
    op.create_index("ix_jobs_tenant_outcome", "jobs", ["tenant_id", "outcome"])
    op.execute(
        "UPDATE jobs SET outcome = state WHERE state IN ('failed', 'cancelled')"
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_tenant_outcome", table_name="jobs")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("outcome")
