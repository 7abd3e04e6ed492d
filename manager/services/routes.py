"""Per-route operations: set a route's traffic ratio, downscale one route."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from common.errors import InvalidAPIParameters, ObjectNotFound, parse_uuid
from common.status import RouteLifecycle, RouteTraffic
from manager.db.models import Event, Route
from manager.ownership import Caller
from manager.services.read import Sessions, load_endpoint


async def _route(db: AsyncSession, endpoint_id: uuid.UUID, route_ref: str) -> Route:
    """The endpoint's unterminated route ``route_ref`` (its id as the client wrote it: parsed only once the
    endpoint is known to be visible, so a foreign endpoint is 404 whatever the route id)."""
    route_id = parse_uuid(route_ref, "route_id")
    route = (await db.execute(sa.select(Route).where(Route.id == route_id, Route.endpoint_id == endpoint_id))
             ).scalar_one_or_none()
    if route is None or route.lifecycle == RouteLifecycle.TERMINATED:
        raise ObjectNotFound(f"route {route_id} not found")
    return route


async def set_traffic_ratio(sessions: Sessions, caller: Caller, endpoint_id: uuid.UUID, shown: str | None = None,
                            *, route_ref: str, ratio: float) -> uuid.UUID:
    """Returns the endpoint id, whose route table must be republished."""
    async with sessions() as db:
        endpoint = await load_endpoint(db, caller, endpoint_id, shown)
        route = await _route(db, endpoint.id, route_ref)
        route.traffic_ratio = ratio
        db.add(Event(endpoint_id=endpoint.id, route_id=route.id, kind="traffic_ratio_changed",
                     data={"traffic_ratio": ratio}))
        await db.commit()
        return endpoint.id


async def downscale_route(sessions: Sessions, caller: Caller, endpoint_id: uuid.UUID, shown: str | None = None,
                          *, route_ref: str) -> uuid.UUID:
    """Stop one replica and lower the desired count by one (Backend.AI semantics). Returns the endpoint id."""
    async with sessions() as db:
        endpoint = await load_endpoint(db, caller, endpoint_id, shown)
        route = await _route(db, endpoint.id, route_ref)
        if route.lifecycle == RouteLifecycle.PROVISIONING:
            raise InvalidAPIParameters("route_id: the route is still provisioning; try again once it runs")
        if route.lifecycle in (RouteLifecycle.RUNNING, RouteLifecycle.FAILED_TO_START):
            if route.lifecycle == RouteLifecycle.RUNNING:
                route.lifecycle = RouteLifecycle.TERMINATING
            else:
                route.lifecycle = RouteLifecycle.TERMINATED
            route.traffic = RouteTraffic.INACTIVE
            endpoint.replicas = max(0, endpoint.replicas - 1)
            db.add(Event(endpoint_id=endpoint.id, route_id=route.id, kind="route_downscaled",
                         data={"replicas": endpoint.replicas}))
            await db.commit()
        return endpoint.id
