"""key check, hashed invite codes, encrypted flag reasons, a truncate-proof audit log

Revision ID: 0010
Revises: 0012
Create Date: 2026-12-03 18:50:00
"""

from __future__ import annotations

import json

import sqlalchemy as sa
import sqlmodel
from alembic import op

import storage._types
import storage.crypto
from storage import crypto

revision = '0010'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Existing invite codes become their keyed hashes and flag reasons are encrypted, with the key in use.

    ``storage.db.Database.upgrade`` runs after the service set its key ring
    (bot.wiring.build), and after the key check: nothing here is encrypted
    under a key that cannot read the rest.
    """
    op.create_table(
        'instancevalue',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column('value', storage.crypto.EncryptedText(), nullable=False),
        sa.Column('created_at', storage._types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('instancevalue', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_instancevalue_name'), ['name'], unique=True)

    bind = op.get_bind()
    with op.batch_alter_table('invite', schema=None) as batch_op:
        batch_op.add_column(sa.Column('code_hash', sqlmodel.sql.sqltypes.AutoString(), nullable=True))
    invites = sa.table('invite', sa.column('id', sa.Integer()), sa.column('code', sa.String()),
                       sa.column('code_hash', sa.String()))
    for row in bind.execute(sa.select(invites.c.id, invites.c.code)).all():
        bind.execute(invites.update().where(invites.c.id == row.id).values(code_hash=crypto.code_hash(row.code)))
    with op.batch_alter_table('invite', schema=None) as batch_op:
        batch_op.drop_index('ix_invite_code')
        batch_op.drop_column('code')
        batch_op.alter_column('code_hash', existing_type=sqlmodel.sql.sqltypes.AutoString(), nullable=False)
        batch_op.create_index(batch_op.f('ix_invite_code_hash'), ['code_hash'], unique=True)

    with op.batch_alter_table('safetyflag', schema=None) as batch_op:
        batch_op.alter_column(
            'reasons', existing_type=sa.JSON(), type_=sa.Text(), existing_nullable=False,
            postgresql_using='reasons::text',
        )
    flags = sa.table('safetyflag', sa.column('id', sa.Integer()), sa.column('reasons', sa.Text()))
    for row in bind.execute(sa.select(flags.c.id, flags.c.reasons)).all():
        if row.reasons is not None and not row.reasons.startswith(crypto.PREFIX):
            sealed = crypto.encrypt(json.dumps(json.loads(row.reasons), separators=(",", ":")))
            bind.execute(flags.update().where(flags.c.id == row.id).values(reasons=sealed))

    if bind.dialect.name == 'postgresql':
        # The row triggers of 0008 never fire for TRUNCATE; a statement-level trigger does. (SQLite has no
        # TRUNCATE: its "DELETE FROM auditentry" fires the row trigger, which its truncate shortcut respects.)
        op.execute(
            """CREATE TRIGGER auditentry_no_truncate BEFORE TRUNCATE ON auditentry
            FOR EACH STATEMENT EXECUTE FUNCTION auditentry_append_only()"""
        )


def downgrade() -> None:
    """Codes cannot be un-hashed: downgrading drops unspent invites' codes (they must be issued again)."""
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("DROP TRIGGER auditentry_no_truncate ON auditentry")
    bind = op.get_bind()
    flags = sa.table('safetyflag', sa.column('id', sa.Integer()), sa.column('reasons', sa.Text()))
    for row in bind.execute(sa.select(flags.c.id, flags.c.reasons)).all():
        if row.reasons is not None and row.reasons.startswith(crypto.PREFIX):
            bind.execute(flags.update().where(flags.c.id == row.id).values(reasons=crypto.decrypt(row.reasons)))
    with op.batch_alter_table('safetyflag', schema=None) as batch_op:
        batch_op.alter_column(
            'reasons', existing_type=sa.Text(), type_=sa.JSON(), existing_nullable=False,
            postgresql_using='reasons::json',
        )
    with op.batch_alter_table('invite', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_invite_code_hash'))
        batch_op.alter_column('code_hash', new_column_name='code')
        batch_op.create_index('ix_invite_code', ['code'], unique=True)
    with op.batch_alter_table('instancevalue', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_instancevalue_name'))
    op.drop_table('instancevalue')
