"""outbox: a partial index of the unpublished events in the relay's order

The relay takes the oldest unpublished events with `FOR UPDATE SKIP LOCKED`. Over the
old `(published_at, created_at)` index PostgreSQL sorted the whole backlog on every pass
(the row locks sit between the sort and the limit, so no top-N sort): 207 ms a pass with
200,000 events waiting. Walking `(created_at, id) WHERE published_at IS NULL` it stops at
the limit: 9 ms.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

PENDING = "published_at IS NULL"


def upgrade() -> None:
    with op.batch_alter_table("outbox_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_outbox_events_pending", ["created_at", "id"], unique=False,
            sqlite_where=sa.text(PENDING), postgresql_where=sa.text(PENDING),
        )  # fmt: skip
        batch_op.drop_index("ix_outbox_events_unpublished")


def downgrade() -> None:
    with op.batch_alter_table("outbox_events", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_events_unpublished", ["published_at", "created_at"], unique=False)
        batch_op.drop_index("ix_outbox_events_pending", sqlite_where=sa.text(PENDING), postgresql_where=sa.text(PENDING))
