"""webhook deliveries: an index on the event

Deleting an old outbox event (core.retention) makes the database look for its deliveries
(the foreign key cascades): without an index on `event_id`, a scan of every delivery for
each event deleted.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_webhook_deliveries_event_id", "webhook_deliveries", ["event_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_event_id", table_name="webhook_deliveries")
