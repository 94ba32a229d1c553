"""Webhooks: where each job sends them, each key's signing secret, the outbox and its attempts.

A frozen copy of the tables at the time of writing. Every step is skipped when what
it makes exists already, so that a database made by create_all (adopted as 0001,
whatever release made it) is brought to this revision too.

Revision ID: 0002
Revises: 0001
"""

import base64
import secrets

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _add_columns(inspector: sa.Inspector, table: str, columns: list[sa.Column]) -> None:
    present = {column["name"] for column in inspector.get_columns(table)}
    for column in columns:
        if column.name not in present:
            op.add_column(table, column)


def _create_outbox(inspector: sa.Inspector, ts: sa.types.TypeEngine) -> None:
    if inspector.has_table("webhook_outbox"):
        return
    op.create_table(
        "webhook_outbox",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(40), nullable=False, unique=True),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("snapshot", sa.JSON, nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", ts),
        sa.Column("claim_token", sa.String(64)),
        sa.Column("claim_expires_at", ts),
        sa.Column("finished_at", ts),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_webhook_outbox_due", "webhook_outbox", ["state", "next_attempt_at"])
    op.create_index("ix_webhook_outbox_job", "webhook_outbox", ["job_id", "seq"])


def _create_attempts(inspector: sa.Inspector, ts: sa.types.TypeEngine) -> None:
    if inspector.has_table("webhook_attempts"):
        return
    op.create_table(
        "webhook_attempts",
        sa.Column("event_id", sa.String(40), primary_key=True),
        sa.Column("number", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("started_at", ts, nullable=False),
        sa.Column("finished_at", ts),
        sa.Column("status_code", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("next_attempt_at", ts),
    )


def _fill_webhook_secrets(bind: sa.Connection) -> None:
    """Existing keys get a signing secret: whsec_ + base64 of 32 random bytes."""
    ids = bind.execute(sa.text("SELECT id FROM api_keys WHERE webhook_secret IS NULL")).scalars().all()
    for key_id in ids:
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")
        bind.execute(
            sa.text("UPDATE api_keys SET webhook_secret = :secret WHERE id = :id AND webhook_secret IS NULL"),
            {"secret": secret, "id": key_id},
        )


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    ts = sa.DateTime(timezone=True)
    _add_columns(
        inspector,
        "jobs",
        [
            sa.Column("webhook_url", sa.Text),
            sa.Column("webhook_filter", sa.JSON),
            sa.Column("webhook_format", sa.String(16)),
            sa.Column("webhook_secret", sa.Text),
            sa.Column("base_url", sa.Text),
        ],
    )
    _add_columns(inspector, "api_keys", [sa.Column("webhook_secret", sa.String(64))])
    _create_outbox(inspector, ts)
    _create_attempts(inspector, ts)
    _fill_webhook_secrets(bind)


def downgrade() -> None:
    op.drop_table("webhook_attempts")
    op.drop_table("webhook_outbox")
    op.drop_column("api_keys", "webhook_secret")
    for column in ("base_url", "webhook_secret", "webhook_format", "webhook_filter", "webhook_url"):
        op.drop_column("jobs", column)
