"""Resolvers of the GraphQL subset: endpoints (read-only) and endpoint auto-scaling rules (CRUD).

Visibility is the same everywhere: a user sees their own endpoints, a domain admin the endpoints of their domain,
a superadmin all of them. Anything outside that is answered exactly like a missing object ("... not found"), so
the API never reveals whether someone else's endpoint or rule exists. Destroyed endpoints are invisible except to
an ``endpoint_list`` filter that names ``lifecycle_stage``.

Every top-level field opens its own database session (graphql-core resolves sibling query fields concurrently);
nested fields read plain dicts prepared by their parent, so a list costs a fixed number of queries.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa
from graphql import GraphQLError, GraphQLResolveInfo
from sqlalchemy.ext.asyncio import AsyncSession

from common.status import EndpointLifecycle
from manager.api.gql.filters import FieldSpec, QueryParseError, parse_filter, parse_order
from manager.api.gql.schema import COMPARATORS, METRIC_SOURCES, decimal_text
from manager.api.views.endpoint import endpoint_node
from manager.context import ManagerContext
from manager.db.models import AutoScalingRule, Endpoint, Event, Project, User
from manager.ownership import Caller, endpoint_visibility
from manager.services import read

MAX_PAGE_SIZE = 100
MAX_OFFSET = 1_000_000
MAX_RULES_PER_ENDPOINT = 32
MAX_COOLDOWN_SECONDS = 7 * 24 * 3600
MAX_ABS_THRESHOLD = Decimal("1e15")
METRIC_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_:.\-]{0,127}$")
RULE_NODE_TYPE = "EndpointAutoScalingRuleNode"


class UserError(GraphQLError):
    """An error meant for the client, with a Backend.AI problem slug in ``extensions.code``."""

    def __init__(self, message: str, code: str = "invalid-api-params"):
        super().__init__(message, extensions={"code": code})


def not_found(what: str) -> UserError:
    return UserError(f"{what} not found", "object-not-found")


# the execution context manager.api.gql builds for each request: {"ctx": ManagerContext, "caller": Caller}
Info = GraphQLResolveInfo[dict[str, Any]]


def _ctx(info: Info) -> ManagerContext:
    ctx: ManagerContext = info.context["ctx"]
    return ctx


def _caller(info: Info) -> Caller:
    caller: Caller = info.context["caller"]
    return caller


# ---------------------------------------------------------------------------------------------------- visibility
endpoint_visible = endpoint_visibility  # one policy for REST and GraphQL (manager.ownership)


def _uuid_arg(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise UserError(f"{what}: not a valid UUID") from None


async def _visible_endpoint(db: AsyncSession, caller: Caller, endpoint_id: uuid.UUID) -> Endpoint:
    endpoint = (await db.execute(sa.select(Endpoint).where(
        Endpoint.id == endpoint_id, Endpoint.lifecycle != EndpointLifecycle.DESTROYED,
        endpoint_visible(caller)))).scalar_one_or_none()
    if endpoint is None:
        raise not_found(f"endpoint {endpoint_id}")
    return endpoint


# ------------------------------------------------------------------------------------------------------ endpoints
async def _endpoint_views(db: Any, endpoints: Sequence[Endpoint]) -> list[dict[str, Any]]:
    """The GraphQL shape of each endpoint (manager.api.views.endpoint), with its routes and its users' emails."""
    if not endpoints:
        return []
    user_ids = {e.owner_id for e in endpoints} | {e.created_user_id for e in endpoints}
    emails = {row[0]: row[1] for row in await db.execute(sa.select(User.id, User.email).where(User.id.in_(user_ids)))}
    return [endpoint_node(snapshot, emails) for snapshot in await read.snapshots(db, endpoints)]


def _lifecycle(value: str) -> EndpointLifecycle:
    return EndpointLifecycle(value.lower())


ENDPOINT_FIELDS: dict[str, FieldSpec] = {
    "endpoint_id": FieldSpec(Endpoint.id, "uuid"),
    "name": FieldSpec(Endpoint.name),
    "image": FieldSpec(Endpoint.image),
    "domain": FieldSpec(Endpoint.domain_name),
    "project": FieldSpec(Endpoint.project_name),
    "resource_group": FieldSpec(Endpoint.scaling_group),
    "url": FieldSpec(Endpoint.url),
    "model": FieldSpec(Endpoint.model_folder_id, "uuid"),
    "session_owner": FieldSpec(Endpoint.owner_id, "uuid"),
    "created_user": FieldSpec(Endpoint.created_user_id, "uuid"),
    "tag": FieldSpec(Endpoint.tag),
    "runtime_variant": FieldSpec(Endpoint.runtime_variant),
    "replicas": FieldSpec(Endpoint.replicas, "int"),
    "desired_session_count": FieldSpec(Endpoint.replicas, "int"),
    "open_to_public": FieldSpec(Endpoint.open_to_public, "bool"),
    "lifecycle_stage": FieldSpec(Endpoint.lifecycle, "enum", _lifecycle),
    "retries": FieldSpec(Endpoint.retries, "int"),
    "created_at": FieldSpec(Endpoint.created_at, "datetime"),
    "destroyed_at": FieldSpec(Endpoint.destroyed_at, "datetime"),
}


def _filter_and_order(filter_: str | None, order: str | None, fields: dict[str, FieldSpec],
                      default_order: list[Any]) -> tuple[Any, set[str], list[Any]]:
    try:
        condition, used = parse_filter(filter_ or "", fields)
    except QueryParseError as exc:
        raise UserError(f"filter: {exc}") from None
    try:
        order_by = parse_order(order, fields) if order else default_order
    except QueryParseError as exc:
        raise UserError(f"order: {exc}") from None
    return condition, used, order_by


def _page_args(limit: int, offset: int) -> None:
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise UserError(f"limit: must be between 1 and {MAX_PAGE_SIZE}")
    if not 0 <= offset <= MAX_OFFSET:
        raise UserError(f"offset: must be between 0 and {MAX_OFFSET}")


async def resolve_endpoint(_root: Any, info: Info, endpoint_id: uuid.UUID) -> dict[str, Any]:
    async with _ctx(info).db() as db:
        endpoint = await _visible_endpoint(db, _caller(info), endpoint_id)
        return (await _endpoint_views(db, [endpoint]))[0]


async def resolve_endpoint_list(_root: Any, info: Info, limit: int, offset: int,
                                filter: str | None = None, order: str | None = None,  # noqa: A002 - wire name
                                domain_name: str | None = None, group_id: uuid.UUID | None = None,
                                project: uuid.UUID | None = None, user_uuid: uuid.UUID | None = None
                                ) -> dict[str, Any]:
    caller = _caller(info)
    _page_args(limit, offset)
    condition, used, order_by = _filter_and_order(filter, order, ENDPOINT_FIELDS, [])
    where = [endpoint_visible(caller), condition]
    if "lifecycle_stage" not in used:
        where.append(Endpoint.lifecycle != EndpointLifecycle.DESTROYED)
    if domain_name is not None:
        where.append(Endpoint.domain_name == domain_name)
    if user_uuid is not None:
        where.append(Endpoint.owner_id == user_uuid)
    async with _ctx(info).db() as db:
        for project_id in (group_id, project):
            if project_id is not None:
                row = await db.get(Project, project_id)
                where.append(Endpoint.project_name == (row.name if row else "\0no-such-project"))
                if row is not None:
                    where.append(Endpoint.domain_name == row.domain_name)
        if not order_by:
            # Own endpoints first for admins: the official CLI resolves a name with `name == "x"` and limit 1,
            # which must never pick another user's endpoint of the same name.
            order_by = [sa.case((Endpoint.owner_id == caller.user_id, 0), else_=1), Endpoint.created_at.asc()]
        total = (await db.execute(sa.select(sa.func.count()).select_from(Endpoint).where(*where))).scalar_one()
        endpoints = list((await db.execute(sa.select(Endpoint).where(*where).order_by(*order_by, Endpoint.id)
                                           .limit(limit).offset(offset))).scalars())
        return {"items": await _endpoint_views(db, endpoints), "total_count": total}


# ---------------------------------------------------------------------------------------------- auto-scaling rules
def rule_global_id(rule_id: uuid.UUID) -> str:
    return base64.b64encode(f"{RULE_NODE_TYPE}:{rule_id}".encode()).decode()


def parse_rule_id(value: str) -> uuid.UUID:
    """A rule id as the client sends it: the row UUID, or a relay global id (base64 ``Type:uuid``)."""
    text = str(value).strip()
    try:
        return uuid.UUID(text)
    except ValueError:
        pass
    try:
        decoded = base64.b64decode(text, validate=True).decode()
        type_name, _, raw = decoded.partition(":")
        if type_name == RULE_NODE_TYPE:
            return uuid.UUID(raw)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise UserError("id: not a valid auto-scaling rule id (a UUID or a relay global id)")


def _rule_view(rule: AutoScalingRule) -> dict[str, Any]:
    return {
        "id": rule_global_id(rule.id), "row_id": rule.id, "endpoint": rule.endpoint_id,
        "metric_source": rule.metric_source, "metric_name": rule.metric_name,
        "threshold": decimal_text(rule.threshold) if rule.threshold is not None else "",
        "comparator": rule.comparator or "", "step_size": rule.step_size, "cooldown_seconds": rule.cooldown_seconds,
        "min_replicas": rule.min_replicas, "max_replicas": rule.max_replicas, "enabled": rule.enabled,
        "created_at": rule.created_at, "last_triggered_at": rule.last_triggered_at,
    }


RULE_FIELDS: dict[str, FieldSpec] = {
    "id": FieldSpec(AutoScalingRule.id, "uuid"),
    "row_id": FieldSpec(AutoScalingRule.id, "uuid"),
    "metric_source": FieldSpec(AutoScalingRule.metric_source, "enum",
                               lambda v: METRIC_SOURCES.get(v.upper().replace("-", "_"), v.lower())),
    "metric_name": FieldSpec(AutoScalingRule.metric_name),
    "comparator": FieldSpec(AutoScalingRule.comparator, "enum",
                            lambda v: COMPARATORS.get(v.upper(), v.lower())),
    "threshold": FieldSpec(AutoScalingRule.threshold, "float"),
    "step_size": FieldSpec(AutoScalingRule.step_size, "int"),
    "cooldown_seconds": FieldSpec(AutoScalingRule.cooldown_seconds, "int"),
    "min_replicas": FieldSpec(AutoScalingRule.min_replicas, "int"),
    "max_replicas": FieldSpec(AutoScalingRule.max_replicas, "int"),
    "enabled": FieldSpec(AutoScalingRule.enabled, "bool"),
    "created_at": FieldSpec(AutoScalingRule.created_at, "datetime"),
    "last_triggered_at": FieldSpec(AutoScalingRule.last_triggered_at, "datetime"),
}


async def _visible_rule(db: Any, caller: Caller, rule_id: uuid.UUID) -> tuple[AutoScalingRule, Endpoint]:
    row = (await db.execute(sa.select(AutoScalingRule, Endpoint).join(
        Endpoint, Endpoint.id == AutoScalingRule.endpoint_id).where(
        AutoScalingRule.id == rule_id, Endpoint.lifecycle != EndpointLifecycle.DESTROYED,
        endpoint_visible(caller)))).first()
    if row is None:
        raise not_found(f"auto-scaling rule {rule_id}")
    return row[0], row[1]


async def resolve_rule_node(_root: Any, info: Info, id: str) -> dict[str, Any]:  # noqa: A002
    rule_id = parse_rule_id(id)
    async with _ctx(info).db() as db:
        rule, _ = await _visible_rule(db, _caller(info), rule_id)
        return _rule_view(rule)


def _bounded(name: str, value: int | None, low: int, high: int) -> None:
    if value is not None and not low <= value <= high:
        raise UserError(f"{name}: must be between {low} and {high}")


async def resolve_rule_nodes(_root: Any, info: Info, endpoint: str,
                             filter: str | None = None, order: str | None = None,  # noqa: A002
                             offset: int | None = None, before: str | None = None, after: str | None = None,
                             first: int | None = None, last: int | None = None) -> dict[str, Any]:
    endpoint_id = _uuid_arg(endpoint, "endpoint")
    _bounded("first", first, 0, MAX_PAGE_SIZE)
    _bounded("last", last, 0, MAX_PAGE_SIZE)
    _bounded("offset", offset, 0, MAX_OFFSET)
    condition, _, order_by = _filter_and_order(filter, order, RULE_FIELDS, [AutoScalingRule.created_at.asc()])
    async with _ctx(info).db() as db:
        await _visible_endpoint(db, _caller(info), endpoint_id)
        rules = list((await db.execute(sa.select(AutoScalingRule).where(
            AutoScalingRule.endpoint_id == endpoint_id, condition).order_by(*order_by, AutoScalingRule.id)
            .limit(10 * MAX_RULES_PER_ENDPOINT))).scalars())
    nodes = [_rule_view(r) for r in rules]
    count = len(nodes)
    start, end = 0, len(nodes)
    cursors = [n["id"] for n in nodes]
    if after is not None:
        if after not in cursors:
            raise UserError("after: unknown cursor")
        start = cursors.index(after) + 1
    if before is not None:
        if before not in cursors:
            raise UserError("before: unknown cursor")
        end = cursors.index(before)
    window = nodes[start:max(start, end)]
    skipped = min(offset or 0, len(window))
    window = window[skipped:]
    has_prev = start > 0 or skipped > 0
    has_next = end < len(nodes)
    if first is not None:
        has_next = has_next or len(window) > first
        window = window[:first]
    if last is not None:
        has_prev = has_prev or len(window) > last
        window = window[len(window) - last:] if last else []
    edges = [{"node": n, "cursor": n["id"]} for n in window]
    return {"edges": edges, "count": count, "pageInfo": {
        "hasNextPage": has_next, "hasPreviousPage": has_prev,
        "startCursor": edges[0]["cursor"] if edges else None, "endCursor": edges[-1]["cursor"] if edges else None}}


def _threshold(value: Any) -> float:
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise UserError(f"threshold: {str(value)[:64]!r} is not a decimal number") from None
    if not number.is_finite() or abs(number) > MAX_ABS_THRESHOLD:
        raise UserError(f"threshold: must be a finite number of magnitude at most {MAX_ABS_THRESHOLD:.0e}")
    result = float(number)
    if not math.isfinite(result):
        raise UserError("threshold: out of range")
    return result


def _validate_rule(ctx: ManagerContext, rule: AutoScalingRule) -> None:
    max_replicas = ctx.config.limits.max_replicas
    if not METRIC_NAME_RE.match(rule.metric_name or ""):
        raise UserError("metric_name: 1-128 characters: letters, digits, '_', ':', '.', '-' (not starting with "
                        "a digit or punctuation)")
    if rule.step_size == 0:
        raise UserError("step_size: must not be 0 (positive scales out, negative scales in)")
    _bounded("step_size", rule.step_size, -max_replicas, max_replicas)
    _bounded("cooldown_seconds", rule.cooldown_seconds, 0, MAX_COOLDOWN_SECONDS)
    _bounded("min_replicas", rule.min_replicas, 0, max_replicas)
    _bounded("max_replicas", rule.max_replicas, 0, max_replicas)
    if rule.min_replicas is not None and rule.max_replicas is not None and rule.max_replicas < rule.min_replicas:
        raise UserError("max_replicas: must be greater than or equal to min_replicas")


_NON_NULLABLE = ("metric_source", "metric_name", "threshold", "comparator", "step_size", "cooldown_seconds",
                 "enabled")


def _apply_props(rule: AutoScalingRule, props: dict[str, Any]) -> list[str]:
    changed = []
    for key, value in props.items():
        if value is None and key in _NON_NULLABLE:
            raise UserError(f"{key}: cannot be null")
        if key == "threshold":
            value = _threshold(value)
        setattr(rule, key, value)
        changed.append(key)
    return changed


def _writable(endpoint: Endpoint) -> None:
    if endpoint.lifecycle != EndpointLifecycle.CREATED:
        raise UserError(f"endpoint {endpoint.id} is being destroyed; its auto-scaling rules cannot be changed",
                        "generic-bad-request")


async def resolve_create_rule(_root: Any, info: Info, endpoint: str,
                              props: dict[str, Any]) -> dict[str, Any]:
    ctx, caller = _ctx(info), _caller(info)
    endpoint_id = _uuid_arg(endpoint, "endpoint")
    async with ctx.db() as db:
        target = await _visible_endpoint(db, caller, endpoint_id)
        _writable(target)
        existing = (await db.execute(sa.select(sa.func.count()).select_from(AutoScalingRule).where(
            AutoScalingRule.endpoint_id == endpoint_id))).scalar_one()
        if existing >= MAX_RULES_PER_ENDPOINT:
            raise UserError(f"an endpoint holds at most {MAX_RULES_PER_ENDPOINT} auto-scaling rules")
        rule = AutoScalingRule(id=uuid.uuid4(), endpoint_id=endpoint_id, enabled=True,
                               created_at=datetime.now(UTC))
        _apply_props(rule, {k: v for k, v in props.items() if not (k == "enabled" and v is None)})
        _validate_rule(ctx, rule)
        db.add(rule)
        db.add(Event(endpoint_id=endpoint_id, kind="autoscaling_rule_created",
                     data={"rule_id": str(rule.id), "by": caller.access_key}))
        await db.commit()
        view = _rule_view(rule)
    ctx.poke(endpoint_id)
    return {"ok": True, "msg": "created", "rule": view}


async def resolve_modify_rule(_root: Any, info: Info, id: str,  # noqa: A002
                              props: dict[str, Any]) -> dict[str, Any]:
    ctx, caller = _ctx(info), _caller(info)
    rule_id = parse_rule_id(id)
    async with ctx.db() as db:
        rule, endpoint = await _visible_rule(db, caller, rule_id)
        _writable(endpoint)
        changed = _apply_props(rule, props)
        _validate_rule(ctx, rule)
        db.add(Event(endpoint_id=endpoint.id, kind="autoscaling_rule_modified",
                     data={"rule_id": str(rule.id), "fields": changed, "by": caller.access_key}))
        await db.commit()
        view = _rule_view(rule)
    ctx.poke(endpoint.id)
    return {"ok": True, "msg": "updated", "rule": view}


async def resolve_delete_rule(_root: Any, info: Info, id: str) -> dict[str, Any]:  # noqa: A002
    ctx, caller = _ctx(info), _caller(info)
    rule_id = parse_rule_id(id)
    async with ctx.db() as db:
        rule, endpoint = await _visible_rule(db, caller, rule_id)
        await db.delete(rule)
        db.add(Event(endpoint_id=endpoint.id, kind="autoscaling_rule_deleted",
                     data={"rule_id": str(rule_id), "by": caller.access_key}))
        await db.commit()
    ctx.poke(endpoint.id)
    return {"ok": True, "msg": "deleted"}
