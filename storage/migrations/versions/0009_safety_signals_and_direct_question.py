"""safety flag signals per layer, and the direct safety question

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 19:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import storage._types
import storage.crypto

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('safetyflag', schema=None) as batch_op:
        batch_op.add_column(sa.Column('signals', storage.crypto.EncryptedJSON(), nullable=True))
        batch_op.add_column(sa.Column('question_asked_at', storage._types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('question_due_at', storage._types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('question_status', sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.create_index(batch_op.f('ix_safetyflag_question_due_at'), ['question_due_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('safetyflag', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_safetyflag_question_due_at'))
        batch_op.drop_column('question_status')
        batch_op.drop_column('question_due_at')
        batch_op.drop_column('question_asked_at')
        batch_op.drop_column('signals')
