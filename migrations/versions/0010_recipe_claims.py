"""recipe claims: the auto recipe's candidates shared with helper workers

A recipe with `parallel_workers` > 1 has helpers on other workers produce its short
rounds: `recipe_claims` says who produces which candidate now (renewed while its holder
lives), and `recipe_candidates.measured_by` which helper produced a recorded one.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 15:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "recipe_claims",
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("recipe", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=1000), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "recipe", "key"),
    )
    with op.batch_alter_table("recipe_candidates") as batch:
        batch.add_column(sa.Column("measured_by", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("recipe_candidates") as batch:
        batch.drop_column("measured_by")
    op.drop_table("recipe_claims")
