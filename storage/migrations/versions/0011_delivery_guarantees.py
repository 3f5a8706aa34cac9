"""delivery guarantees: sender processes and heartbeats, a shared rate budget, outbox priority and parts

Revision ID: 0011
Revises: 0009
Create Date: 2026-12-03 18:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import storage._types

revision = "0011"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "senderprocess",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("host", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("pid_started", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("started_at", storage._types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", storage._types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("senderprocess", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_senderprocess_heartbeat_at"), ["heartbeat_at"], unique=False)

    op.create_table(
        "ratebudget",
        sa.Column("channel", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("next_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("channel"),
    )

    with op.batch_alter_table("outboxmessage", schema=None) as batch_op:
        batch_op.add_column(sa.Column("priority", sa.Integer(), server_default="1", nullable=False))
        batch_op.add_column(sa.Column("claimed_by", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.add_column(sa.Column("parts_sent", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("subject", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.create_index(batch_op.f("ix_outboxmessage_subject"), ["subject"], unique=False)
        batch_op.create_index("ix_outbox_chat", ["channel", "address", "id"], unique=False)
        # Claims go in priority order: the pending index carries it.
        batch_op.drop_index("ix_outbox_pending")
        batch_op.create_index("ix_outbox_pending", ["channel", "sent_at", "priority", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("outboxmessage", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_pending")
        batch_op.create_index("ix_outbox_pending", ["channel", "sent_at", "id"], unique=False)
        batch_op.drop_index("ix_outbox_chat")
        batch_op.drop_index(batch_op.f("ix_outboxmessage_subject"))
        batch_op.drop_column("subject")
        batch_op.drop_column("parts_sent")
        batch_op.drop_column("claimed_by")
        batch_op.drop_column("priority")
    op.drop_table("ratebudget")
    with op.batch_alter_table("senderprocess", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_senderprocess_heartbeat_at"))
    op.drop_table("senderprocess")
