"""``GET /agents`` (our extension, superadmin only): the agents the manager knows, their slots and what is free.

Operators use it to see why an endpoint cannot be placed; tests use it to wait until agents have registered.
"""

from __future__ import annotations

import sqlalchemy as sa
from aiohttp import web

from common.errors import Forbidden
from common.slots import ResourceSlots
from common.status import UserRole
from manager.api.auth import caller_of
from manager.api.util import json_response
from manager.context import CTX
from manager.control.loop import live_holdings, total_slots
from manager.db.models import Agent

routes = web.RouteTableDef()


@routes.get("/agents")
async def list_agents(request: web.Request) -> web.Response:
    if caller_of(request).role != UserRole.SUPERADMIN:
        raise Forbidden("listing agents needs the superadmin role")
    async with request.app[CTX].db() as db:
        agents = list((await db.execute(sa.select(Agent).order_by(Agent.id))).scalars())
        held = await live_holdings(db)
    result = []
    for a in agents:
        available = ResourceSlots.parse(a.available_slots)
        result.append({
            "id": a.id, "status": a.status.value, "scaling_group": a.scaling_group,
            "architecture": a.architecture, "runtime": a.runtime, "version": a.version,
            "available_slots": available.to_json(), "occupied_slots": total_slots(held.get(a.id, [])).to_json(),
            "replicas": len(held.get(a.id, [])), "first_contact": a.first_contact.isoformat(),
            "last_heartbeat": a.last_heartbeat.isoformat(),
        })
    return json_response(result)
