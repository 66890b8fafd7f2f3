"""serving: served name and prompt contract on routes, rollouts, replica holdings

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("routing_entry", schema=None) as batch_op:
        batch_op.add_column(sa.Column("served_as", sqlmodel.sql.sqltypes.AutoString(length=80),
                                      nullable=False, server_default=""))
        batch_op.add_column(sa.Column("prompt", sa.JSON(), nullable=True))
    # Routes written before this revision are served under their version's name too.
    op.execute("UPDATE routing_entry SET served_as = adapter || '-v' || CAST(version AS TEXT)")
    op.create_table(
        "serving_rollout",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("adapter", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("path", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("served_as", sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
        sa.Column("tasks", sa.JSON(), nullable=True),
        sa.Column("prompts", sa.JSON(), nullable=True),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("requested_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_serving_rollout_status", "serving_rollout", ["status"], unique=False)
    op.create_table(
        "serving_held",
        sa.Column("replica", sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
        sa.Column("served_as", sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
        sa.Column("adapter", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("unwanted_since", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("replica", "served_as"),
    )


def downgrade() -> None:
    op.drop_table("serving_held")
    op.drop_index("ix_serving_rollout_status", table_name="serving_rollout")
    op.drop_table("serving_rollout")
    with op.batch_alter_table("routing_entry", schema=None) as batch_op:
        batch_op.drop_column("prompt")
        batch_op.drop_column("served_as")
