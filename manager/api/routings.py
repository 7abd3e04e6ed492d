"""Per-route operations: traffic ratio (``PUT``) and downscaling one route (``DELETE``)."""

from __future__ import annotations

import sqlalchemy as sa
from aiohttp import web

from common.errors import InvalidAPIParameters, ObjectNotFound
from common.status import RouteLifecycle, RouteTraffic
from manager.api.auth import caller_of
from manager.api.schemas import RouteTrafficRequest
from manager.api.services import load_endpoint
from manager.api.util import json_response, parse_body, parse_uuid
from manager.context import CTX
from manager.control.publisher import publish_endpoints
from manager.db.models import Event, Route

routes = web.RouteTableDef()


async def _route(db, endpoint_id, route_id_text: str) -> Route:
    route_id = parse_uuid(route_id_text, "route_id")
    route = (await db.execute(sa.select(Route).where(Route.id == route_id, Route.endpoint_id == endpoint_id))
             ).scalar_one_or_none()
    if route is None or route.lifecycle == RouteLifecycle.TERMINATED:
        raise ObjectNotFound(f"route {route_id} not found")
    return route


@routes.put("/services/{service_id}/routings/{route_id}")
async def update_traffic_ratio(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    body = await parse_body(request, RouteTrafficRequest)
    async with ctx.db() as db:
        endpoint = await load_endpoint(db, caller_of(request), request.match_info["service_id"])
        route = await _route(db, endpoint.id, request.match_info["route_id"])
        route.traffic_ratio = body.traffic_ratio
        db.add(Event(endpoint_id=endpoint.id, route_id=route.id, kind="traffic_ratio_changed",
                     data={"traffic_ratio": body.traffic_ratio}))
        await db.commit()
    await publish_endpoints(ctx, {endpoint.id})
    ctx.poke(endpoint.id)  # on a follower: the leader republishes too, so the newest table wins
    return json_response({"success": True})


@routes.delete("/services/{service_id}/routings/{route_id}")
async def downscale_route(request: web.Request) -> web.Response:
    """Kill one replica and lower the desired count by one (Backend.AI semantics)."""
    ctx = request.app[CTX]
    async with ctx.db() as db:
        endpoint = await load_endpoint(db, caller_of(request), request.match_info["service_id"])
        route = await _route(db, endpoint.id, request.match_info["route_id"])
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
    await publish_endpoints(ctx, {endpoint.id})
    ctx.poke(endpoint.id)
    return json_response({"success": True})
