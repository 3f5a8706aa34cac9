"""safety plans, PHQ-9/GAD-7 schedules and responses, homework importance and review marks

Revision ID: 0013
Revises: 0009
Create Date: 2026-12-03 19:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import storage._types
import storage.crypto

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'safetyplan',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('client_id', sa.Integer(), nullable=False),
        sa.Column('therapist_id', sa.Integer(), nullable=False),
        sa.Column('warning_signs', storage.crypto.EncryptedText(), nullable=True),
        sa.Column('coping', storage.crypto.EncryptedText(), nullable=True),
        sa.Column('distractions', storage.crypto.EncryptedText(), nullable=True),
        sa.Column('people', storage.crypto.EncryptedText(), nullable=True),
        sa.Column('professionals', storage.crypto.EncryptedText(), nullable=True),
        sa.Column('environment', storage.crypto.EncryptedText(), nullable=True),
        sa.Column('created_at', storage._types.UTCDateTime(timezone=True), nullable=False),
        sa.Column('reviewed_at', storage._types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['client_id'], ['client.id']),
        sa.ForeignKeyConstraint(['therapist_id'], ['therapist.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('safetyplan', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_safetyplan_client_id'), ['client_id'], unique=True)
        batch_op.create_index(batch_op.f('ix_safetyplan_therapist_id'), ['therapist_id'], unique=False)

    op.create_table(
        'measureschedule',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('client_id', sa.Integer(), nullable=False),
        sa.Column('therapist_id', sa.Integer(), nullable=False),
        sa.Column('instrument', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column('cadence', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column('due_at', storage._types.UTCDateTime(timezone=True), nullable=True),
        sa.Column('created_at', storage._types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['client_id'], ['client.id']),
        sa.ForeignKeyConstraint(['therapist_id'], ['therapist.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('client_id', 'instrument'),
    )
    with op.batch_alter_table('measureschedule', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_measureschedule_client_id'), ['client_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_measureschedule_therapist_id'), ['therapist_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_measureschedule_due_at'), ['due_at'], unique=False)

    op.create_table(
        'measureresponse',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('client_id', sa.Integer(), nullable=False),
        sa.Column('instrument', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column('status', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column('started_at', storage._types.UTCDateTime(timezone=True), nullable=False),
        sa.Column('completed_at', storage._types.UTCDateTime(timezone=True), nullable=True),
        sa.Column('answers', storage.crypto.EncryptedJSON(), nullable=False),
        sa.Column('score', sa.Integer(), nullable=True),
        sa.Column('band', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.ForeignKeyConstraint(['client_id'], ['client.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('measureresponse', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_measureresponse_client_id'), ['client_id'], unique=False)
        batch_op.create_index('ix_measureresponse_client_started', ['client_id', 'started_at'], unique=False)

    with op.batch_alter_table('homework', schema=None) as batch_op:
        batch_op.add_column(sa.Column('importance', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('reviewed_at', storage._types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('reviewed_by', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('review_note', storage.crypto.EncryptedText(), nullable=True))
        batch_op.create_foreign_key('fk_homework_reviewed_by_therapist', 'therapist', ['reviewed_by'], ['id'])


def downgrade() -> None:
    with op.batch_alter_table('homework', schema=None) as batch_op:
        batch_op.drop_constraint('fk_homework_reviewed_by_therapist', type_='foreignkey')
        batch_op.drop_column('review_note')
        batch_op.drop_column('reviewed_by')
        batch_op.drop_column('reviewed_at')
        batch_op.drop_column('importance')
    with op.batch_alter_table('measureresponse', schema=None) as batch_op:
        batch_op.drop_index('ix_measureresponse_client_started')
        batch_op.drop_index(batch_op.f('ix_measureresponse_client_id'))
    op.drop_table('measureresponse')
    with op.batch_alter_table('measureschedule', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_measureschedule_due_at'))
        batch_op.drop_index(batch_op.f('ix_measureschedule_therapist_id'))
        batch_op.drop_index(batch_op.f('ix_measureschedule_client_id'))
    op.drop_table('measureschedule')
    with op.batch_alter_table('safetyplan', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_safetyplan_therapist_id'))
        batch_op.drop_index(batch_op.f('ix_safetyplan_client_id'))
    op.drop_table('safetyplan')
