"""endpoints.subdomain for the app proxy's wildcard mode

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
    with op.batch_alter_table("endpoints") as batch_op:
        batch_op.add_column(sa.Column("subdomain", sa.String(length=64), nullable=True))
        batch_op.create_index("uq_endpoints_subdomain_live", ["subdomain"], unique=True,
                              postgresql_where=sa.text("lifecycle <> 'destroyed'"),
                              sqlite_where=sa.text("lifecycle <> 'destroyed'"))


def downgrade() -> None:
    with op.batch_alter_table("endpoints") as batch_op:
        batch_op.drop_index("uq_endpoints_subdomain_live")
        batch_op.drop_column("subdomain")
