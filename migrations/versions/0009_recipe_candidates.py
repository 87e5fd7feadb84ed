"""recipe candidates: the auto recipe's finished candidates, kept for a resume

A job whose worker died started its auto recipe again from nothing on its next attempt;
each finished candidate (its measurement, and its model as a blob) is now a row of
`recipe_candidates`, and `recipe_runs` keeps when the recipe's first attempt began, which
its time budget counts from.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 19:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "recipe_runs",
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("recipe", sa.String(length=64), nullable=False),
        sa.Column("first_attempt", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "recipe"),
    )
    op.create_table(
        "recipe_candidates",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("recipe", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=1000), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("measurement", sa.JSON(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("model_file", sa.String(length=32), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("float_model_file", sa.String(length=32), nullable=True),
        sa.Column("float_sha256", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "recipe", "key", name="uq_recipe_candidates_key"),
    )
    op.create_index("ix_recipe_candidates_job_id", "recipe_candidates", ["job_id"])
    op.create_index("ix_recipe_candidates_sha256", "recipe_candidates", ["sha256"])
    op.create_index("ix_recipe_candidates_float_sha256", "recipe_candidates", ["float_sha256"])


def downgrade() -> None:
    op.drop_index("ix_recipe_candidates_float_sha256", table_name="recipe_candidates")
    op.drop_index("ix_recipe_candidates_sha256", table_name="recipe_candidates")
    op.drop_index("ix_recipe_candidates_job_id", table_name="recipe_candidates")
    op.drop_table("recipe_candidates")
    op.drop_table("recipe_runs")
