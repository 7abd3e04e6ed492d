"""Per-route operations: traffic ratio (``PUT``) and downscaling one route (``DELETE``); the rules:
manager/services/routes.py."""

from __future__ import annotations

from aiohttp import web

from manager.api.auth import caller_of
from manager.api.schemas import RouteTrafficRequest
from manager.api.util import json_response, parse_body, service_ref
from manager.context import CTX
from manager.control.publisher import publish_endpoints
from manager.services import routes as route_ops

routes = web.RouteTableDef()


@routes.put("/services/{service_id}/routings/{route_id}")
async def update_traffic_ratio(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    body = await parse_body(request, RouteTrafficRequest)
    endpoint_id = await route_ops.set_traffic_ratio(ctx.db, caller_of(request), *service_ref(request),
                                                    route_ref=request.match_info["route_id"],
                                                    ratio=body.traffic_ratio)
    await publish_endpoints(ctx, {endpoint_id})
    ctx.poke(endpoint_id)  # on a follower: the leader republishes too, so the newest table wins
    return json_response({"success": True})


@routes.delete("/services/{service_id}/routings/{route_id}")
async def downscale_route(request: web.Request) -> web.Response:
    """Kill one replica and lower the desired count by one (Backend.AI semantics)."""
    ctx = request.app[CTX]
    endpoint_id = await route_ops.downscale_route(ctx.db, caller_of(request), *service_ref(request),
                                                  route_ref=request.match_info["route_id"])
    await publish_endpoints(ctx, {endpoint_id})
    ctx.poke(endpoint_id)
    return json_response({"success": True})
