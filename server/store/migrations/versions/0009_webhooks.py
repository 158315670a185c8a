"""webhooks: endpoints, their cursors over the event log, deliveries and attempts

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 09:30:00.000000

New tables only: nothing existing changes. Each endpoint reads its owner's accounts'
event logs (``account_events``) from a cursor per account; each event it wants becomes
a delivery (one webhook-id), each try of it an attempt.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("user_id", sa.String(40), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("description", sa.String(200), nullable=False, server_default=""),
        sa.Column("events", sa.String(1400), nullable=False, server_default="*"),
        sa.Column("status", sa.String(10), nullable=False, server_default="enabled"),
        sa.Column("disabled_reason", sa.String(300), nullable=False, server_default=""),
        sa.Column("secret", sa.String(100), nullable=False),
        sa.Column("old_secret", sa.String(100), nullable=True),
        sa.Column("old_secret_until", sa.BigInteger, nullable=True),
        sa.Column("failing_since", sa.BigInteger, nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_webhook_endpoints_user_id", "webhook_endpoints", ["user_id"])
    op.create_table(
        "webhook_cursors",
        sa.Column(
            "endpoint_id",
            sa.String(40),
            sa.ForeignKey("webhook_endpoints.id"),
            primary_key=True,
        ),
        sa.Column("account_id", sa.String(40), sa.ForeignKey("accounts.id"), primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column(
            "endpoint_id", sa.String(40), sa.ForeignKey("webhook_endpoints.id"), nullable=False
        ),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("event_key", sa.String(100), nullable=False),
        sa.Column("type", sa.String(30), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.BigInteger, nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("delivered_at", sa.BigInteger, nullable=True),
        sa.UniqueConstraint("endpoint_id", "event_key", name="uq_webhook_deliveries_event"),
        sa.UniqueConstraint("endpoint_id", "position", name="uq_webhook_deliveries_position"),
    )
    op.create_index(
        "ix_webhook_deliveries_status_next",
        "webhook_deliveries",
        ["status", "next_attempt_at"],
    )
    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "delivery_id", sa.String(40), sa.ForeignKey("webhook_deliveries.id"), nullable=False
        ),
        sa.Column("at", sa.BigInteger, nullable=False),
        sa.Column("status_code", sa.Integer, nullable=True),
        sa.Column("error", sa.String(300), nullable=False, server_default=""),
        sa.Column("duration_us", sa.BigInteger, nullable=False),
        sa.Column("response", sa.Text, nullable=False, server_default=""),
        sa.Column("next_attempt_at", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_webhook_attempts_delivery_id", "webhook_attempts", ["delivery_id"])


def downgrade() -> None:
    op.drop_index("ix_webhook_attempts_delivery_id", "webhook_attempts")
    op.drop_table("webhook_attempts")
    op.drop_index("ix_webhook_deliveries_status_next", "webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_cursors")
    op.drop_index("ix_webhook_endpoints_user_id", "webhook_endpoints")
    op.drop_table("webhook_endpoints")
