"""Gateway usage: the proxies' signed ``POST /internal/usage`` and the users' ``GET /usage`` (docs/gateway.md)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

from aiohttp import web
from pydantic import BaseModel, ValidationError

from common.errors import InvalidAPIParameters, invalid_params_from_validation
from common.signing import read_signed_json
from common.usage import UsageBatch
from manager.api.auth import caller_of
from manager.api.util import json_response
from manager.context import CTX
from manager.db.models import UsageRecordRow
from manager.durations import parse_duration
from manager.ownership import owner_visibility
from manager.usage import GroupBy, record_and_publish, usage_summary

routes = web.RouteTableDef()
# Cluster-signed routes, registered on the manager's own app only (never under the console's /api/).
internal_routes = web.RouteTableDef()

COUNT_COLUMNS = ("requests", "prompt_tokens", "completion_tokens", "total_tokens", "errors", "cost", "unpriced")
MAX_RANGE = timedelta(days=366)  # one query sums at most a year of records


class UsageRow(BaseModel):
    day: str | None = None
    model: str | None = None
    key: str | None = None
    user: str | None = None
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    errors: int
    cost: float = 0.0  # at the prices in force when the records arrived
    unpriced: int = 0  # records of a model without a price then (not in cost)


class UsageResponse(BaseModel):
    since: datetime
    until: datetime | None
    by: list[GroupBy]
    rows: list[UsageRow]


@internal_routes.post("/internal/usage")
async def receive_usage(request: web.Request) -> web.Response:
    data = await read_signed_json(request)
    try:
        batch = UsageBatch.model_validate(data)
    except ValidationError as exc:
        raise invalid_params_from_validation(exc) from None
    written = await record_and_publish(request.app[CTX], batch.records)
    return json_response({"received": len(batch.records), "written": written})


def _time(value: str, field: str, now: datetime) -> datetime:
    """``7d`` (that long ago) or an ISO 8601 time."""
    try:
        return now - timedelta(seconds=parse_duration(value))
    except ValueError:
        pass
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidAPIParameters(f"{field}: a duration such as 7d or an ISO 8601 time") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


@routes.get("/usage")
async def get_usage(request: web.Request) -> web.Response:
    """Requests and tokens per ``by`` (comma-separated: day, model, key, user) since ``since`` (default 7d).
    Users see their own usage; admins everyone's they may act for."""
    caller = caller_of(request)
    now = datetime.now(UTC)
    query = request.query
    try:
        by = [GroupBy(v) for v in dict.fromkeys(query.get("by", "day").split(",")) if v]
    except ValueError:
        raise InvalidAPIParameters("by: comma-separated values of day, model, key, user") from None
    since = _time(query.get("since", "7d"), "since", now)
    until = _time(query["until"], "until", now) if "until" in query else None
    if (until or now) - since > MAX_RANGE:
        raise InvalidAPIParameters(f"since: at most {MAX_RANGE.days} days before until")
    visible = (owner_visibility(caller, UsageRecordRow.user_id) if caller.is_admin
               else UsageRecordRow.user_id == caller.user_id)
    fmt = query.get("format", "json")
    if fmt not in ("json", "csv"):
        raise InvalidAPIParameters("format: json or csv")
    async with request.app[CTX].db() as db:
        rows = await usage_summary(db, visible, by, since, until)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        columns = [*(g.value for g in by), *COUNT_COLUMNS]
        writer.writerow(columns)
        writer.writerows([[row.get(c) for c in columns] for row in rows])
        return web.Response(text=out.getvalue(), content_type="text/csv",
                            headers={"Content-Disposition": 'attachment; filename="usage.csv"'})
    return json_response(UsageResponse(since=since, until=until, by=by, rows=[UsageRow(**r) for r in rows])
                         .model_dump(mode="json", exclude_none=True))  # rows name only their groups
