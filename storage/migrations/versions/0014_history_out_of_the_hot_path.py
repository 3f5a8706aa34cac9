"""history out of the hot path: indexes on current state, why a homework closed, weekly debrief sums

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03 19:00:00

Existing homework is left as it is (a therapist's open homework stays open
until the sweep's expiry rule or the next delivery closes it). The weekly
sums are filled from the debriefs already stored, from their stored rubric
criteria; a debrief completed before criteria were stored counts towards the
amount but not the quality, and its week is bucketed in UTC.
"""

from __future__ import annotations

from datetime import date, timedelta

import sqlalchemy as sa
import sqlmodel
from alembic import op

import storage._types

revision = "0014"
down_revision = "0010"
branch_labels = None
depends_on = None

_COUNTS = ("debriefs", "quantity_sum", "quantity_count", "criteria_met", "criteria_judged")


def upgrade() -> None:
    with op.batch_alter_table("homework", schema=None) as batch_op:
        batch_op.add_column(sa.Column("closed_reason", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.create_index("ix_homework_current", ["client_id", "status", "delivered_at", "id"], unique=False)
        batch_op.create_index("ix_homework_expiry", ["status", "due"], unique=False)
    with op.batch_alter_table("occasion", schema=None) as batch_op:
        batch_op.create_index("ix_occasion_homework_status", ["homework_id", "status"], unique=False)
        batch_op.create_index("ix_occasion_client_status", ["client_id", "status", "sent_at"], unique=False)
    with op.batch_alter_table("debrief", schema=None) as batch_op:
        batch_op.create_index("ix_debrief_client_started", ["client_id", "started_at"], unique=False)
    with op.batch_alter_table("outboxmessage", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_failed", ["failed_at"], unique=False)
    op.create_table(
        "debriefweek",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("client_id", sa.Integer(), nullable=False),
        sa.Column("week", sa.Date(), nullable=False),
        sa.Column("debriefs", sa.Integer(), nullable=False),
        sa.Column("quantity_sum", sa.Integer(), nullable=False),
        sa.Column("quantity_count", sa.Integer(), nullable=False),
        sa.Column("criteria_met", sa.Integer(), nullable=False),
        sa.Column("criteria_judged", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["client_id"], ["client.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("client_id", "week"),
    )
    with op.batch_alter_table("debriefweek", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_debriefweek_client_id"), ["client_id"], unique=False)
    _backfill()


def _backfill() -> None:
    """Sum the debriefs already stored into their (UTC) weeks; plain columns only, nothing decrypted."""
    bind = op.get_bind()
    debrief = sa.table(
        "debrief",
        sa.column("client_id", sa.Integer),
        sa.column("kind", sa.String),
        sa.column("status", sa.String),
        sa.column("started_at", storage._types.UTCDateTime()),
        sa.column("quantity", sa.Integer),
        sa.column("criteria", sa.JSON),
    )
    sums: dict[tuple[int, date], list[int]] = {}
    rows = bind.execute(
        sa.select(debrief.c.client_id, debrief.c.started_at, debrief.c.quantity, debrief.c.criteria).where(
            debrief.c.status == "complete", debrief.c.kind == "debrief"
        )
    )
    for client_id, started_at, quantity, criteria in rows:
        day = started_at.date()
        total = sums.setdefault((client_id, day - timedelta(days=day.weekday())), [0, 0, 0, 0, 0])
        total[0] += 1
        if quantity is not None:
            total[1] += quantity
            total[2] += 1
        if criteria is not None:
            total[3] += len(criteria)
            total[4] += 1
    if not sums:
        return
    week_table = sa.table(
        "debriefweek",
        *(sa.column(name, sa.Integer) for name in _COUNTS),
        sa.column("client_id", sa.Integer),
        sa.column("week", sa.Date),
    )
    op.bulk_insert(
        week_table,
        [
            {"client_id": client_id, "week": week, **dict(zip(_COUNTS, counts, strict=True))}
            for (client_id, week), counts in sums.items()
        ],
    )


def downgrade() -> None:
    with op.batch_alter_table("debriefweek", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_debriefweek_client_id"))
    op.drop_table("debriefweek")
    with op.batch_alter_table("debrief", schema=None) as batch_op:
        batch_op.drop_index("ix_debrief_client_started")
    with op.batch_alter_table("outboxmessage", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_failed")
    with op.batch_alter_table("occasion", schema=None) as batch_op:
        batch_op.drop_index("ix_occasion_client_status")
        batch_op.drop_index("ix_occasion_homework_status")
    with op.batch_alter_table("homework", schema=None) as batch_op:
        batch_op.drop_index("ix_homework_expiry")
        batch_op.drop_index("ix_homework_current")
        batch_op.drop_column("closed_reason")
