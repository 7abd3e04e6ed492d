"""Route publisher: writes each endpoint's route table (running + healthy + active routes) to the store."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.orm import load_only

from common.protocol import RouteTable, RouteTarget
from common.status import EndpointLifecycle, RouteHealth, RouteLifecycle, RouteTraffic, route_serving
from common.store import ROUTES_PREFIX
from manager.db.models import AutoScalingRule, Endpoint, EndpointToken, Route, Session

log = logging.getLogger(__name__)


def route_key(endpoint_id: uuid.UUID) -> str:
    return f"{ROUTES_PREFIX}{endpoint_id}"


class RouteRow(Protocol):
    """What a route table needs of a route and its session (a row of the publisher's column query)."""

    id: uuid.UUID
    lifecycle: RouteLifecycle
    health: RouteHealth
    traffic: RouteTraffic
    traffic_ratio: float
    host: str | None
    port: int | None


def should_hold_requests(endpoint: Endpoint, routes: Sequence[RouteRow], wakeable: bool) -> bool:
    """Hold requests that find no route only when one is coming: a replica starting while starts are not
    failing, or an endpoint at zero replicas that an autoscaling rule wakes on demand."""
    if endpoint.lifecycle != EndpointLifecycle.CREATED:
        return False
    if endpoint.replicas == 0:
        return wakeable
    starting = any(r.lifecycle == RouteLifecycle.PROVISIONING for r in routes)
    return starting and endpoint.retries == 0


def build_route_table(endpoint: Endpoint, routes: Sequence[RouteRow], revoked: list[str],
                      wakeable: bool = False) -> RouteTable:
    targets = [
        RouteTarget(route_id=r.id, host=r.host, port=r.port, traffic_ratio=r.traffic_ratio)
        for r in routes
        if route_serving(r.lifecycle, r.health, r.traffic) and r.host and r.port
    ]
    return RouteTable(endpoint_id=endpoint.id, name=endpoint.name, port=endpoint.proxy_port,
                      subdomain=endpoint.subdomain,
                      open_to_public=endpoint.open_to_public, owner_id=endpoint.owner_id,
                      cors_allowed_origins=list(endpoint.cors_allowed_origins or []), routes=targets,
                      revoked_token_ids=revoked, route_capacity=endpoint.route_capacity,
                      aliases=list(endpoint.model_aliases or []), engine_model_name=endpoint.engine_model_name,
                      hold_requests=should_hold_requests(endpoint, routes, wakeable), updated_at=time.time())


# Endpoint columns a route table needs; the other JSON columns (definition, environ, ...) are never decoded here.
TABLE_COLUMNS = (Endpoint.name, Endpoint.owner_id, Endpoint.kind, Endpoint.lifecycle, Endpoint.replicas,
                 Endpoint.retries, Endpoint.proxy_port, Endpoint.subdomain, Endpoint.open_to_public,
                 Endpoint.cors_allowed_origins, Endpoint.route_capacity, Endpoint.model_aliases,
                 Endpoint.engine_model_name)
# Store writes in flight at once. etcd pipelines them over one connection; one by one, the forced resync of
# 2,000 tables took over 10 s of the control loop's tick (bench/control_plane).
WRITE_CONCURRENCY = 32


async def publish_endpoints(ctx: Any, endpoint_ids: set[uuid.UUID], force: bool = False,
                            stored_prefix: str = ROUTES_PREFIX) -> None:
    """Publish (or remove) the tables of these endpoints. Safe to call from handlers and loops.

    Unchanged tables are not rewritten. With ``force`` (the periodic resync, which heals a store that lost
    data or was written by someone else) "unchanged" is judged against what the store holds — one range read of
    ``stored_prefix``, which must cover every key of ``endpoint_ids`` — rather than against what this process
    last wrote.
    """
    if not endpoint_ids:
        return
    now = datetime.now(UTC)
    async with ctx.db() as db:
        endpoints = {e.id: e for e in (await db.execute(
            sa.select(Endpoint).options(load_only(*TABLE_COLUMNS)).where(Endpoint.id.in_(endpoint_ids)))).scalars()}
        rows = (await db.execute(
            sa.select(Route.id, Route.endpoint_id, Route.lifecycle, Route.health, Route.traffic, Route.traffic_ratio,
                      Session.host, Session.port).outerjoin(Session, Session.id == Route.session_id)
            .where(Route.endpoint_id.in_(endpoint_ids),  # only these can serve or be starting
                   Route.lifecycle.in_([RouteLifecycle.RUNNING, RouteLifecycle.PROVISIONING])))).all()
        revoked_rows = (await db.execute(
            sa.select(EndpointToken.endpoint_id, EndpointToken.id).where(
                EndpointToken.endpoint_id.in_(endpoint_ids), EndpointToken.revoked_at.is_not(None),
                EndpointToken.expires_at > now))).all()
        wakeable = set((await db.execute(sa.select(AutoScalingRule.endpoint_id).where(
            AutoScalingRule.endpoint_id.in_(endpoint_ids), AutoScalingRule.enabled.is_(True)))).scalars())
    by_endpoint: dict[uuid.UUID, list[RouteRow]] = defaultdict(list)
    for row in rows:
        by_endpoint[row.endpoint_id].append(row)
    revoked_by_endpoint: dict[uuid.UUID, list[str]] = defaultdict(list)
    for endpoint_id, token_id in revoked_rows:
        revoked_by_endpoint[endpoint_id].append(str(token_id))
    stored: dict[str, str] | None = None
    if force:
        try:
            stored = await ctx.store.get_prefix(stored_prefix)
        except Exception as exc:  # store down: write everything, the failures keep their endpoints dirty
            log.warning("cannot read the route tables for the resync: %s", exc)
    writes: list[tuple[uuid.UUID, str, str | None]] = []
    for endpoint_id in endpoint_ids:
        endpoint = endpoints.get(endpoint_id)
        key = route_key(endpoint_id)
        value: str | None = None
        if endpoint is not None and endpoint.lifecycle != EndpointLifecycle.DESTROYED and endpoint.kind == "service":
            value = build_route_table(endpoint, by_endpoint.get(endpoint_id, []),
                                      revoked_by_endpoint.get(endpoint_id, []),
                                      endpoint_id in wakeable).model_dump_json(exclude={"updated_at"})
        if force:
            unchanged = stored is not None and stored.get(key) == value
        else:
            unchanged = key in ctx.published and ctx.published.get(key) == value
        if unchanged:
            ctx.published[key] = value
        else:
            writes.append((endpoint_id, key, value))
    if writes:
        await _write_all(ctx, writes)


async def _write_all(ctx: Any, writes: list[tuple[uuid.UUID, str, str | None]]) -> None:
    gate = asyncio.Semaphore(WRITE_CONCURRENCY)

    async def write(endpoint_id: uuid.UUID, key: str, value: str | None) -> None:
        async with gate:
            try:
                if value is None:
                    await ctx.store.delete(key)
                else:
                    await ctx.store.put(key, value)
                ctx.published[key] = value
            except Exception as exc:  # store down: keep the endpoint dirty, the loop retries
                log.warning("cannot publish route table of %s: %s", endpoint_id, exc)
                ctx.dirty_endpoints.add(endpoint_id)

    await asyncio.gather(*(write(*item) for item in writes))
