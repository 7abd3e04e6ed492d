"""``GET /services/{service_id}/autoscaling-decisions`` (our extension): the autoscaler's audit log of a service.

Newest first. Every change the autoscaler made (rules and scale from zero) is there; decisions that were blocked
(cooldown, already at a bound, requests waiting) appear at most once per rule and reason per
``[autoscale] blocked_event_interval``. Ownership is checked like every ``/services/{id}`` route (foreign or
unknown ids are 404). Query: ``limit`` (1..500, default 50), ``applied_only=true`` to list changes only.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from aiohttp import web
from pydantic import BaseModel, ConfigDict

from common.errors import InvalidAPIParameters
from manager.api.auth import caller_of
from manager.api.services import load_endpoint
from manager.api.util import json_response
from manager.context import CTX
from manager.control.autoscale import EVENT_KIND
from manager.db.models import Event

routes = web.RouteTableDef()
DEFAULT_LIMIT = 50
MAX_LIMIT = 500


class AutoscalingDecision(BaseModel):
    """One recorded decision (an ``events`` row of kind ``autoscaling_decision``)."""

    model_config = ConfigDict(extra="allow")

    id: int
    created_at: str | None
    rule_id: str | None
    metric_source: str | None
    metric_name: str | None
    comparator: str | None
    threshold: float | None
    step_size: int | None
    observed: float | None
    old_replicas: int
    new_replicas: int
    # scale | scale_from_zero (applied) · cooldown | at_bound | demand (blocked, nothing changed)
    outcome: str
    applied: bool
    reason: str


class AutoscalingDecisionsResponse(BaseModel):
    decisions: list[AutoscalingDecision]


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", str(DEFAULT_LIMIT))
    try:
        value = int(raw)
    except ValueError:
        raise InvalidAPIParameters("limit: must be an integer") from None
    if not 1 <= value <= MAX_LIMIT:
        raise InvalidAPIParameters(f"limit: must be between 1 and {MAX_LIMIT}")
    return value


def _flag(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise InvalidAPIParameters(f"{name}: must be true or false")
    return raw in ("true", "1")


def decision_view(event: Event) -> dict[str, Any]:
    data = dict(event.data or {})
    return AutoscalingDecision.model_validate({
        **data, "id": event.id, "created_at": event.created_at.isoformat() if event.created_at else None,
        "rule_id": data.get("rule_id"), "metric_source": data.get("metric_source"),
        "metric_name": data.get("metric_name"), "comparator": data.get("comparator"),
        "threshold": data.get("threshold"), "step_size": data.get("step_size"), "observed": data.get("observed"),
        "old_replicas": data.get("old_replicas", 0), "new_replicas": data.get("new_replicas", 0),
        "outcome": data.get("outcome", ""), "applied": bool(data.get("applied")), "reason": data.get("reason", ""),
    }).model_dump(mode="json")


@routes.get("/services/{service_id}/autoscaling-decisions")
async def list_decisions(request: web.Request) -> web.Response:
    limit = _limit(request)
    applied_only = _flag(request, "applied_only")
    async with request.app[CTX].db() as db:
        endpoint = await load_endpoint(db, caller_of(request), request.match_info["service_id"])
        events = list((await db.execute(sa.select(Event).where(
            Event.endpoint_id == endpoint.id, Event.kind == EVENT_KIND).order_by(Event.id.desc())
            .limit(MAX_LIMIT if applied_only else limit))).scalars())
    views = [decision_view(e) for e in events]
    if applied_only:
        views = [v for v in views if v["applied"]][:limit]
    return json_response(AutoscalingDecisionsResponse.model_validate({"decisions": views}).model_dump(mode="json"))


__all__ = ["AutoscalingDecision", "AutoscalingDecisionsResponse", "routes"]
