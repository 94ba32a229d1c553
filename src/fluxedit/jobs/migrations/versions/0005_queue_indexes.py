"""Indexes for counting a queue per key: one job's queue position, each key's last start.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_jobs_queue_key": ("state", "model_id", "key_id", "seq"),
    "ix_jobs_key_started": ("key_id", "model_id", "started_at"),
}


def upgrade() -> None:
    # A database made by create_all of the current tables has them already.
    existing = {index["name"] for index in sa.inspect(op.get_bind()).get_indexes("jobs")}
    for name, columns in INDEXES.items():
        if name not in existing:
            op.create_index(name, "jobs", list(columns))


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="jobs")
