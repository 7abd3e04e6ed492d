"""endpoints.cors_allowed_origins and endpoints.network_outbound: per-service CORS origins and outbound network

Revision ID: 0006
Revises: 0005

Existing endpoints get the safe defaults: no origin allowed, no outbound network.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("endpoints") as batch_op:
        batch_op.add_column(sa.Column("cors_allowed_origins", JSONType, nullable=False,
                                      server_default=sa.text("'[]'")))
        batch_op.add_column(sa.Column("network_outbound", sa.Boolean(), nullable=False,
                                      server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("endpoints") as batch_op:
        batch_op.drop_column("network_outbound")
        batch_op.drop_column("cors_allowed_origins")
