"""Cluster-internal routes (signed with the cluster secret, not with user keypairs)."""

from __future__ import annotations

from aiohttp import web
from pydantic import ValidationError

from common.errors import InvalidAPIParameters, invalid_params_from_validation
from common.protocol import AgentHeartbeat
from common.signing import read_signed_json
from manager.api.util import json_response
from manager.context import CTX
from manager.control.heartbeat import apply_heartbeat

routes = web.RouteTableDef()


@routes.post("/internal/heartbeat")
async def heartbeat(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    data = await read_signed_json(request)
    if not isinstance(data, dict):
        raise InvalidAPIParameters("body: must be a JSON object")
    try:
        hb = AgentHeartbeat.model_validate(data)
    except ValidationError as exc:
        raise invalid_params_from_validation(exc) from None
    reply, changed = await apply_heartbeat(ctx, hb)
    if changed:
        # Health changes reach the app proxies now, not at the next tick: unhealthy routes leave at once
        # (coalesced with other beats' changes: manager.control.publish_soon).
        assert ctx.publish_soon is not None  # set up with the app, before any request
        ctx.publish_soon.add(changed)
        # Wake the loops (on a follower: the leader's, which also republishes these tables from a fresh read).
        ctx.poke(*changed)
    return json_response(reply.model_dump(mode="json"))
