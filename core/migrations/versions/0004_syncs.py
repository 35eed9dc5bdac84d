"""syncs: sync cursors, connection schedules, paused and one-at-a-time sync runs

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy import Text
from sqlalchemy.dialects import postgresql

import core.models

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql")
ACTIVE_SYNC = "kind = 'sync' AND status IN ('queued', 'running')"


def upgrade() -> None:
    op.create_table(
        "sync_cursors",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("connection_id", sa.String(length=36), nullable=False),
        sa.Column("stream", sa.String(length=100), nullable=False),
        sa.Column("cursor", JSON, nullable=True),
        sa.Column("run_id", sa.String(length=36), nullable=True),
        sa.Column("updated_at", core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(["connection_id"], ["connections.id"], name=op.f("fk_sync_cursors_connection_id_connections"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_sync_cursors_tenant_id_tenants"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_cursors")),
        sa.UniqueConstraint("connection_id", "stream", name=op.f("uq_sync_cursors_connection_id_stream")),
    )
    with op.batch_alter_table("sync_cursors", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sync_cursors_tenant_id"), ["tenant_id"], unique=False)

    with op.batch_alter_table("connections", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sync_schedule", JSON, nullable=True))
        batch_op.add_column(sa.Column("next_sync_at", core.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("last_synced_at", core.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_connections_next_sync_at"), ["next_sync_at"], unique=False)

    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("records_skipped", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("resume_at", core.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("worker_id", sa.String(length=200), nullable=True))
        batch_op.create_index(
            "uq_runs_active_sync", ["connection_id"], unique=True,
            sqlite_where=sa.text(ACTIVE_SYNC), postgresql_where=sa.text(ACTIVE_SYNC),
        )  # fmt: skip


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("uq_runs_active_sync", sqlite_where=sa.text(ACTIVE_SYNC), postgresql_where=sa.text(ACTIVE_SYNC))
        batch_op.drop_column("worker_id")
        batch_op.drop_column("resume_at")
        batch_op.drop_column("records_skipped")

    with op.batch_alter_table("connections", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_connections_next_sync_at"))
        batch_op.drop_column("last_synced_at")
        batch_op.drop_column("next_sync_at")
        batch_op.drop_column("sync_schedule")

    with op.batch_alter_table("sync_cursors", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sync_cursors_tenant_id"))

    op.drop_table("sync_cursors")
