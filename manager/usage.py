"""Gateway usage in the manager: writing the proxies' batches and summing them (docs/gateway.md)."""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from common.usage import UsageRecord
from manager.apikeys import publish_spend
from manager.db.models import UsageRecordRow
from manager.prices import cost, prices_of

log = logging.getLogger(__name__)


class GroupBy(enum.StrEnum):
    DAY = "day"
    MODEL = "model"
    KEY = "key"
    USER = "user"


async def record_and_publish(ctx: Any, records: Sequence[UsageRecord]) -> int:
    """Write a batch, then republish the spend of its budgeted keys (a store failure is logged: the records are
    kept, and the next batch or manager start publishes the spend)."""
    async with ctx.db() as db:
        written = await record_usage(db, records)
        try:
            await publish_spend(ctx, db, {r.key_id for r in records})
        except Exception as exc:  # noqa: BLE001 - etcd down: the records are written; the spend goes out later
            log.warning("usage written but the keys' spend not published: %s: %s", type(exc).__name__, exc)
    return written


async def record_usage(db: Any, records: Sequence[UsageRecord]) -> int:
    """Insert the records, skipping request ids already stored (a resent batch); returns how many were new."""
    if not records:
        return 0
    prices = await prices_of(db, (r.model for r in records))
    rows = [{**r.model_dump(exclude={"at"}), "at": datetime.fromtimestamp(r.at, UTC),
             "cost": cost(r.prompt_tokens, r.completion_tokens, prices.get(r.model))} for r in records]
    dialect = db.bind.dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(UsageRecordRow).values(rows).on_conflict_do_nothing(index_elements=["request_id"])
    result = await db.execute(stmt)
    await db.commit()
    return int(result.rowcount or 0)


def _group_column(by: GroupBy) -> Any:
    if by is GroupBy.DAY:
        return sa.func.date(UsageRecordRow.at)  # UTC day; SQLite and PostgreSQL both have date()
    if by is GroupBy.MODEL:
        return UsageRecordRow.model
    if by is GroupBy.KEY:
        return UsageRecordRow.key_id
    return UsageRecordRow.user_id


async def usage_summary(db: Any, visible: Any, by: Sequence[GroupBy], since: datetime,
                        until: datetime | None) -> list[dict[str, Any]]:
    """Requests and tokens grouped by ``by`` (in that order), over the rows ``visible`` allows."""
    columns = [_group_column(g).label(g.value) for g in by]
    where = [visible, UsageRecordRow.at >= since]
    if until is not None:
        where.append(UsageRecordRow.at < until)
    stmt = (sa.select(*columns, sa.func.count().label("requests"),
                      sa.func.coalesce(sa.func.sum(UsageRecordRow.prompt_tokens), 0).label("prompt_tokens"),
                      sa.func.coalesce(sa.func.sum(UsageRecordRow.completion_tokens), 0).label("completion_tokens"),
                      sa.func.sum(sa.case((UsageRecordRow.status >= 400, 1), else_=0)).label("errors"),
                      sa.func.coalesce(sa.func.sum(UsageRecordRow.cost), 0.0).label("cost"),
                      sa.func.sum(sa.case((UsageRecordRow.cost.is_(None), 1), else_=0)).label("unpriced"))
            .where(*where))
    if columns:
        stmt = stmt.group_by(*columns).order_by(*columns)
    out = []
    for row in (await db.execute(stmt)).mappings():
        item: dict[str, Any] = {g.value: str(row[g.value]) for g in by}
        prompt, completion = int(row["prompt_tokens"]), int(row["completion_tokens"])
        item.update(requests=int(row["requests"]), prompt_tokens=prompt, completion_tokens=completion,
                    total_tokens=prompt + completion, errors=int(row["errors"] or 0),
                    cost=round(float(row["cost"] or 0.0), 6), unpriced=int(row["unpriced"] or 0))
        out.append(item)
    return out
