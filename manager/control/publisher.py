"""Route publisher: writes each endpoint's route table (running + healthy + active routes) to the store."""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime

import sqlalchemy as sa

from common.protocol import RouteTable, RouteTarget
from common.status import EndpointLifecycle, RouteHealth, RouteLifecycle, RouteTraffic
from common.store import ROUTES_PREFIX
from manager.db.models import AutoScalingRule, Endpoint, EndpointToken, Route, Session

log = logging.getLogger(__name__)


def route_key(endpoint_id: uuid.UUID) -> str:
    return f"{ROUTES_PREFIX}{endpoint_id}"


def should_hold_requests(endpoint: Endpoint, routes: list[tuple[Route, Session | None]], wakeable: bool) -> bool:
    """Hold requests that find no route only when one is coming: a replica starting while starts are not
    failing, or an endpoint at zero replicas that an autoscaling rule wakes on demand."""
    if endpoint.lifecycle != EndpointLifecycle.CREATED:
        return False
    if endpoint.replicas == 0:
        return wakeable
    starting = any(r.lifecycle == RouteLifecycle.PROVISIONING for r, _ in routes)
    return starting and endpoint.retries == 0


def build_route_table(endpoint: Endpoint, routes: list[tuple[Route, Session | None]],
                      revoked: list[str], wakeable: bool = False) -> RouteTable:
    targets = [
        RouteTarget(route_id=r.id, host=s.host, port=s.port, traffic_ratio=r.traffic_ratio)
        for r, s in routes
        if r.lifecycle == RouteLifecycle.RUNNING and r.health == RouteHealth.HEALTHY
        and r.traffic == RouteTraffic.ACTIVE and s is not None and s.host and s.port
    ]
    return RouteTable(endpoint_id=endpoint.id, name=endpoint.name, port=endpoint.proxy_port,
                      subdomain=endpoint.subdomain,
                      open_to_public=endpoint.open_to_public, routes=targets, revoked_token_ids=revoked,
                      hold_requests=should_hold_requests(endpoint, routes, wakeable), updated_at=time.time())


async def publish_endpoints(ctx, endpoint_ids: set[uuid.UUID], force: bool = False) -> None:  # type: ignore[no-untyped-def]
    """Publish (or remove) the tables of these endpoints. Safe to call from handlers and loops.

    Unchanged tables are not rewritten unless ``force`` (the periodic full resync heals a store that lost data).
    """
    if not endpoint_ids:
        return
    now = datetime.now(UTC)
    async with ctx.db() as db:
        endpoints = {e.id: e for e in (await db.execute(
            sa.select(Endpoint).where(Endpoint.id.in_(endpoint_ids)))).scalars()}
        rows = (await db.execute(
            sa.select(Route, Session).outerjoin(Session, Session.id == Route.session_id)
            .where(Route.endpoint_id.in_(endpoint_ids)))).all()
        revoked_rows = (await db.execute(
            sa.select(EndpointToken.endpoint_id, EndpointToken.id).where(
                EndpointToken.endpoint_id.in_(endpoint_ids), EndpointToken.revoked_at.is_not(None),
                EndpointToken.expires_at > now))).all()
        wakeable = set((await db.execute(sa.select(AutoScalingRule.endpoint_id).where(
            AutoScalingRule.endpoint_id.in_(endpoint_ids), AutoScalingRule.enabled.is_(True)))).scalars())
    for endpoint_id in endpoint_ids:
        endpoint = endpoints.get(endpoint_id)
        key = route_key(endpoint_id)
        try:
            if endpoint is None or endpoint.lifecycle == EndpointLifecycle.DESTROYED or endpoint.kind != "service":
                if force or ctx.published.get(key) is not None or key not in ctx.published:
                    await ctx.store.delete(key)
                ctx.published[key] = None
                continue
            table = build_route_table(endpoint, [(r, s) for r, s in rows if r.endpoint_id == endpoint_id],
                                      [str(t) for e, t in revoked_rows if e == endpoint_id], endpoint_id in wakeable)
            value = table.model_dump_json(exclude={"updated_at"})
            if force or ctx.published.get(key) != value:
                await ctx.store.put(key, value)
                ctx.published[key] = value
        except Exception as exc:  # store down: keep the endpoint dirty, the loop retries
            log.warning("cannot publish route table of %s: %s", endpoint_id, exc)
            ctx.dirty_endpoints.add(endpoint_id)
