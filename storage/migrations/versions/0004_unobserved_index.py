"""feedback_event: one partial index on the unobserved events replaces three full ones

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("feedback_event", schema=None) as batch_op:
        batch_op.drop_index("ix_feedback_event_observed")
        batch_op.drop_index("ix_feedback_event_received_at")
        batch_op.drop_index("ix_feedback_event_task")
        batch_op.create_index(
            "ix_feedback_event_unobserved", ["received_at", "id"], unique=False,
            postgresql_where=sa.text("observed IS false"), sqlite_where=sa.text("observed IS 0"))


def downgrade() -> None:
    with op.batch_alter_table("feedback_event", schema=None) as batch_op:
        batch_op.drop_index("ix_feedback_event_unobserved")
        batch_op.create_index("ix_feedback_event_task", ["task"], unique=False)
        batch_op.create_index("ix_feedback_event_received_at", ["received_at"], unique=False)
        batch_op.create_index("ix_feedback_event_observed", ["observed"], unique=False)
