"""Gateway queue and prices: endpoints.route_capacity, model_prices, usage_records.cost

Revision ID: 0010
Revises: 0009

endpoints.route_capacity: gateway requests one replica serves at once before the gateway queues them; existing
endpoints get NULL (the app proxy's [gateway] default_route_capacity). model_prices: per model, currency units per
1M input and output tokens. usage_records.cost: the record's cost at the price in force when it arrived (NULL: no
price then). An index on (key_id, at) serves the month's spend per budgeted key (docs/gateway.md).
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
    op.create_table(
        "model_prices",
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("input_per_1m", sa.Float(), nullable=False),
        sa.Column("output_per_1m", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.Uuid(), nullable=True),
        sa.PrimaryKeyConstraint("model", name=op.f("pk_model_prices")),
    )
    with op.batch_alter_table("usage_records") as batch_op:
        batch_op.add_column(sa.Column("cost", sa.Float(), nullable=True))
    op.create_index("ix_usage_records_key_id_at", "usage_records", ["key_id", "at"])


def downgrade() -> None:
    op.drop_index("ix_usage_records_key_id_at", table_name="usage_records")
    with op.batch_alter_table("usage_records") as batch_op:
        batch_op.drop_column("cost")
    op.drop_table("model_prices")
    with op.batch_alter_table("endpoints") as batch_op:
        batch_op.drop_column("route_capacity")
