"""Per-key limits: queued and running jobs, requests per minute, scheduling priority.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("key_limits"):
        return  # a database made by create_all of the current tables, adopted at the baseline
    op.create_table(
        "key_limits",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("max_queued", sa.Integer),
        sa.Column("max_running", sa.Integer),
        sa.Column("requests_per_minute", sa.Integer),
        sa.Column("priority", sa.Integer),
    )


def downgrade() -> None:
    op.drop_table("key_limits")
