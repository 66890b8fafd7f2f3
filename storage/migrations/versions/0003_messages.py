"""messages: the conversation an event answered, carried into its training example

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("feedback_event", schema=None) as batch_op:
        batch_op.add_column(sa.Column("messages", sa.JSON(), nullable=True))
    with op.batch_alter_table("training_example", schema=None) as batch_op:
        batch_op.add_column(sa.Column("messages", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("training_example", schema=None) as batch_op:
        batch_op.drop_column("messages")
    with op.batch_alter_table("feedback_event", schema=None) as batch_op:
        batch_op.drop_column("messages")
