"""Gateway usage in the manager: writing the proxies' batches and summing them (docs/gateway.md)."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from common.usage import UsageRecord
from manager.db.models import UsageRecordRow


class GroupBy(enum.StrEnum):
    DAY = "day"
    MODEL = "model"
    KEY = "key"
    USER = "user"


async def record_usage(db: Any, records: Sequence[UsageRecord]) -> int:
    """Insert the records, skipping request ids already stored (a resent batch); returns how many were new."""
    if not records:
        return 0
    rows = [{**r.model_dump(exclude={"at"}), "at": datetime.fromtimestamp(r.at, UTC)} for r in records]
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
                      sa.func.sum(sa.case((UsageRecordRow.status >= 400, 1), else_=0)).label("errors"))
            .where(*where))
    if columns:
        stmt = stmt.group_by(*columns).order_by(*columns)
    out = []
    for row in (await db.execute(stmt)).mappings():
        item: dict[str, Any] = {g.value: str(row[g.value]) for g in by}
        prompt, completion = int(row["prompt_tokens"]), int(row["completion_tokens"])
        item.update(requests=int(row["requests"]), prompt_tokens=prompt, completion_tokens=completion,
                    total_tokens=prompt + completion, errors=int(row["errors"] or 0))
        out.append(item)
    return out
