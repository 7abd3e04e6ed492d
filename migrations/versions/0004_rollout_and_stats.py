"""Rolling updates (revisions, surge limit), per-session utilisation stats and GPU allocations, agent devices

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("endpoints") as batch_op:
        batch_op.add_column(sa.Column("revision", sa.Integer(), nullable=False, server_default="1"))
        batch_op.add_column(sa.Column("max_surge", sa.Integer(), nullable=False, server_default="1"))
    with op.batch_alter_table("routes") as batch_op:
        batch_op.add_column(sa.Column("revision", sa.Integer(), nullable=False, server_default="1"))
    with op.batch_alter_table("sessions") as batch_op:
        batch_op.add_column(sa.Column("stats", JSONType, nullable=True))
        batch_op.add_column(sa.Column("allocation", JSONType, nullable=True))
    with op.batch_alter_table("agents") as batch_op:
        batch_op.add_column(sa.Column("devices", JSONType, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("agents") as batch_op:
        batch_op.drop_column("devices")
    with op.batch_alter_table("sessions") as batch_op:
        batch_op.drop_column("allocation")
        batch_op.drop_column("stats")
    with op.batch_alter_table("routes") as batch_op:
        batch_op.drop_column("revision")
    with op.batch_alter_table("endpoints") as batch_op:
        batch_op.drop_column("max_surge")
        batch_op.drop_column("revision")
