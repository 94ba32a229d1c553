"""Per key and model queued counters, kept by triggers on jobs (fluxedit.jobs.queue_counts).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

from fluxedit.jobs.queue_counts import install_queue_counts

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if not sa.inspect(bind).has_table("queue_counts"):  # (create_all of the current tables made it)
        op.create_table(
            "queue_counts",
            sa.Column("model_id", sa.String(200), primary_key=True),
            sa.Column("key_id", sa.String(64), primary_key=True),
            sa.Column("queued", sa.Integer, nullable=False),
        )
        op.create_index("ix_queue_counts_key", "queue_counts", ["key_id"])
    install_queue_counts(bind)  # the triggers, and the queues counted once


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS jobs_count_queued ON jobs")
    op.execute("DROP FUNCTION IF EXISTS fluxedit_count_queued()")
    op.drop_table("queue_counts")
