"""Model prices, the cost of usage records and what keys spent this month (docs/gateway.md, Prices and budgets).

A price is per model name: currency units per 1M input (prompt) and 1M output (completion) tokens. Each usage
record gets its cost when it arrives, at the price in force then (a later price change does not rewrite
history); a model without a price costs nothing (``cost`` NULL). A key's spend this month is the sum of its
records' costs since the first of the month (UTC), published with the key to the app proxies after each batch.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from manager.db.models import ModelPrice, UsageRecordRow

PER = 1_000_000  # prices are per 1M tokens


def cost(prompt_tokens: int, completion_tokens: int, price: tuple[float, float] | None) -> float | None:
    """The cost of one request at ``price`` (input, output per 1M tokens); None without a price (pure)."""
    if price is None:
        return None
    return (prompt_tokens * price[0] + completion_tokens * price[1]) / PER


def month_start(now: datetime) -> datetime:
    """The first instant of ``now``'s calendar month in UTC (pure)."""
    now = now.astimezone(UTC)
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


async def prices_of(db: Any, models: Iterable[str]) -> dict[str, tuple[float, float]]:
    wanted = sorted(set(models))
    if not wanted:
        return {}
    rows = (await db.execute(sa.select(ModelPrice).where(ModelPrice.model.in_(wanted)))).scalars()
    return {p.model: (p.input_per_1m, p.output_per_1m) for p in rows}


async def spent_this_month(db: Any, key_ids: Iterable[uuid.UUID], now: datetime | None = None
                           ) -> dict[uuid.UUID, float]:
    """Sum of the costs of each key's records since the first of the month (UTC); keys without any: 0."""
    ids = list(set(key_ids))
    if not ids:
        return {}
    since = month_start(now or datetime.now(UTC))
    stmt = (sa.select(UsageRecordRow.key_id, sa.func.coalesce(sa.func.sum(UsageRecordRow.cost), 0.0))
            .where(UsageRecordRow.key_id.in_(ids), UsageRecordRow.at >= since).group_by(UsageRecordRow.key_id))
    found: Mapping[uuid.UUID, float] = {k: float(v) for k, v in (await db.execute(stmt)).all()}
    return {k: found.get(k, 0.0) for k in ids}
