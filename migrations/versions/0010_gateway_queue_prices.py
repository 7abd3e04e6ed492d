"""endpoints.route_capacity: gateway requests one replica serves at once before the gateway queues them

Revision ID: 0010
Revises: 0009

Existing endpoints get NULL: the app proxy's [gateway] default_route_capacity applies (docs/gateway.md).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("endpoints") as batch_op:
        batch_op.add_column(sa.Column("route_capacity", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("endpoints") as batch_op:
        batch_op.drop_column("route_capacity")
