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
from manager.control.heartbeat import ACTIVE_SESSION_STATES
from manager.db.models import Agent, Session

routes = web.RouteTableDef()


@routes.get("/agents")
async def list_agents(request: web.Request) -> web.Response:
    if caller_of(request).role != UserRole.SUPERADMIN:
        raise Forbidden("listing agents needs the superadmin role")
    async with request.app[CTX].db() as db:
        agents = list((await db.execute(sa.select(Agent).order_by(Agent.id))).scalars())
        occupied: dict[str, ResourceSlots] = {a.id: ResourceSlots() for a in agents}
        replicas: dict[str, int] = {a.id: 0 for a in agents}
        for agent_id, slots in (await db.execute(sa.select(Session.agent_id, Session.occupied_slots).where(
                Session.status.in_(ACTIVE_SESSION_STATES), Session.agent_id.is_not(None)))).all():
            if agent_id in occupied:
                occupied[agent_id] = occupied[agent_id] + ResourceSlots.parse(slots)
                replicas[agent_id] += 1
    result = []
    for a in agents:
        available = ResourceSlots.parse(a.available_slots)
        result.append({
            "id": a.id, "status": a.status.value, "scaling_group": a.scaling_group,
            "architecture": a.architecture, "runtime": a.runtime, "version": a.version,
            "available_slots": available.to_json(), "occupied_slots": occupied[a.id].to_json(),
            "replicas": replicas[a.id], "first_contact": a.first_contact.isoformat(),
            "last_heartbeat": a.last_heartbeat.isoformat(),
        })
    return json_response(result)
