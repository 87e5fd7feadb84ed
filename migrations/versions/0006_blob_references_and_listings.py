"""indexes for blob reference checks and for listing models and datasets

Deleting a model, dataset or job asks whether any other row still names the same blob
(by sha256): artifacts get an index on sha256 like models and datasets have. Listings
of a tenant's models and datasets, newest first, get (tenant_id, created_at).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 12:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_artifacts_sha256", "artifacts", ["sha256"])
    op.create_index("ix_models_tenant_created", "models", ["tenant_id", "created_at"])
    op.create_index("ix_datasets_tenant_created", "datasets", ["tenant_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_datasets_tenant_created", table_name="datasets")
    op.drop_index("ix_models_tenant_created", table_name="models")
    op.drop_index("ix_artifacts_sha256", table_name="artifacts")
