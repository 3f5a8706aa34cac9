"""encrypted free text

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 07:42:21.018155
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import storage._types

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    """JSON and VARCHAR columns become TEXT, to hold Fernet tokens (storage.crypto).

    Existing values are kept as they are: plaintext is still read, and
    `companion keys rotate` encrypts it.
    """
    with op.batch_alter_table("conversationstate", schema=None) as batch_op:
        batch_op.alter_column(
            "data", existing_type=sa.JSON(), type_=sa.Text(), existing_nullable=False, postgresql_using="data::text"
        )
    with op.batch_alter_table("homework", schema=None) as batch_op:
        batch_op.alter_column("title", existing_type=sa.VARCHAR(), type_=sa.Text(), existing_nullable=False)
    with op.batch_alter_table("outboxmessage", schema=None) as batch_op:
        batch_op.alter_column(
            "payload", existing_type=sa.JSON(), type_=sa.Text(), existing_nullable=False,
            postgresql_using="payload::text",
        )


def downgrade() -> None:
    """Only possible while the data is still plaintext (encrypted tokens are not JSON)."""
    with op.batch_alter_table("outboxmessage", schema=None) as batch_op:
        batch_op.alter_column(
            "payload", existing_type=sa.Text(), type_=sa.JSON(), existing_nullable=False,
            postgresql_using="payload::json",
        )
    with op.batch_alter_table("homework", schema=None) as batch_op:
        batch_op.alter_column("title", existing_type=sa.Text(), type_=sa.VARCHAR(), existing_nullable=False)
    with op.batch_alter_table("conversationstate", schema=None) as batch_op:
        batch_op.alter_column(
            "data", existing_type=sa.Text(), type_=sa.JSON(), existing_nullable=False, postgresql_using="data::json"
        )
