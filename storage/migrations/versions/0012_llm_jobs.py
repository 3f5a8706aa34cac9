"""llm jobs: model calls decided in a turn, run after its commit

Revision ID: 0012
Revises: 0009
Create Date: 2026-12-03 18:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import storage._types
import storage.crypto

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('llmjob',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('client_id', sa.Integer(), nullable=True),
    sa.Column('state_id', sa.Integer(), nullable=True),
    sa.Column('flow', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('step', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('channel', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('address', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('request', storage.crypto.EncryptedJSON(), nullable=False),
    sa.Column('fallback', storage.crypto.EncryptedJSON(), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('outcome', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('created_at', storage._types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('deadline_at', storage._types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('claimed_until', storage._types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('finished_at', storage._types.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('llmjob', schema=None) as batch_op:
        batch_op.create_index('ix_llmjob_pending', ['status', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_llmjob_client_id'), ['client_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('llmjob', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_llmjob_client_id'))
        batch_op.drop_index('ix_llmjob_pending')
    op.drop_table('llmjob')
