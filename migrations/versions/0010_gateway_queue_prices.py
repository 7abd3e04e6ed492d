"""Gateway queue, prices and key defaults: endpoints.route_capacity, model_prices, usage_records.cost,
user_key_defaults, api_keys.priority nullable, endpoints.model_aliases and endpoints.engine_model_name

Revision ID: 0010
Revises: 0009

endpoints.route_capacity: gateway requests one replica serves at once before the gateway queues them; existing
endpoints get NULL (the app proxy's [gateway] default_route_capacity). model_prices: per model, currency units per
1M input and output tokens. usage_records.cost: the record's cost at the price in force when it arrived (NULL: no
price then). An index on (key_id, at) serves the month's spend per budgeted key. user_key_defaults: per user, the
limits, budget and priority a key without its own value inherits; api_keys.priority NULL = inherit (existing keys
keep their explicit class). endpoints.model_aliases (more model names the gateway serves the service under) and
engine_model_name (what the gateway writes into the body's "model"; NULL: passed through) (docs/gateway.md).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("endpoints") as batch_op:
        batch_op.add_column(sa.Column("route_capacity", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("model_aliases", JSONType, nullable=False, server_default=sa.text("'[]'")))
        batch_op.add_column(sa.Column("engine_model_name", sa.String(length=256), nullable=True))
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
    op.create_table(
        "user_key_defaults",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("rpm", sa.Integer(), nullable=True),
        sa.Column("tpm", sa.BigInteger(), nullable=True),
        sa.Column("max_parallel", sa.Integer(), nullable=True),
        sa.Column("budget", sa.Float(), nullable=True),
        sa.Column("priority", sa.String(length=16), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_user_key_defaults_user_id_users"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_user_key_defaults")),
    )
    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.alter_column("priority", existing_type=sa.String(length=32), nullable=True)


def downgrade() -> None:
    op.execute("UPDATE api_keys SET priority = 'standard' WHERE priority IS NULL")
    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.alter_column("priority", existing_type=sa.String(length=32), nullable=False)
    op.drop_table("user_key_defaults")
    op.drop_index("ix_usage_records_key_id_at", table_name="usage_records")
    with op.batch_alter_table("usage_records") as batch_op:
        batch_op.drop_column("cost")
    op.drop_table("model_prices")
    with op.batch_alter_table("endpoints") as batch_op:
        batch_op.drop_column("engine_model_name")
        batch_op.drop_column("model_aliases")
        batch_op.drop_column("route_capacity")
