"""A running job's phase (fetching, loading, denoising, encoding), shown in its status.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "phase" not in {column["name"] for column in sa.inspect(op.get_bind()).get_columns("jobs")}:
        op.add_column("jobs", sa.Column("phase", sa.String(16)))


def downgrade() -> None:
    op.drop_column("jobs", "phase")
