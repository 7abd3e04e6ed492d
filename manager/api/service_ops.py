"""``/services/_/search``, ``/services/_/runtimes``, ``/services/{id}/sync`` and ``/services/_/try`` (dry run),
plus the SSE stream of background tasks (``GET /events/background-task?task_id=``)."""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from typing import Any

import sqlalchemy as sa
from aiohttp import web

from common.errors import InvalidAPIParameters, ObjectNotFound
from common.status import EndpointLifecycle, RouteHealth, RouteLifecycle
from manager.api.auth import caller_of
from manager.api.schemas import (
    NewServiceRequest,
    Pagination,
    RuntimesResponse,
    SearchItem,
    SearchServicesRequest,
    SearchServicesResponse,
    StringFilter,
    TaskResponse,
)
from manager.api.services import load_endpoint, new_endpoint, resolve_create_request
from manager.api.util import json_response, parse_body, parse_uuid
from manager.context import CTX
from manager.control.publisher import publish_endpoints
from manager.db.models import Endpoint, Route, User, route_active_clause
from manager.dryrun import run_dry_run
from manager.endpoint_status import derive_endpoint_status
from manager.endpoints import RUNTIME_VARIANT_LABELS
from manager.ownership import can_act_for, endpoint_visibility

routes = web.RouteTableDef()


def _string_condition(column, flt: StringFilter):
    conds = []
    if flt.equals is not None:
        conds.append(column == flt.equals)
    if flt.not_equals is not None:
        conds.append(column != flt.not_equals)
    if flt.i_equals is not None:
        conds.append(sa.func.lower(column) == flt.i_equals.lower())
    if flt.contains is not None:
        conds.append(column.contains(flt.contains, autoescape=True))
    if flt.i_contains is not None:
        conds.append(sa.func.lower(column).contains(flt.i_contains.lower(), autoescape=True))
    if flt.starts_with is not None:
        conds.append(column.startswith(flt.starts_with, autoescape=True))
    if flt.ends_with is not None:
        conds.append(column.endswith(flt.ends_with, autoescape=True))
    return conds


@routes.post("/services/_/search")
async def search_services(request: web.Request) -> web.Response:
    caller = caller_of(request)
    body = await parse_body(request, SearchServicesRequest)
    destroyed = body.lifecycle == "destroyed"
    conds = [Endpoint.lifecycle == EndpointLifecycle.DESTROYED if destroyed
             else Endpoint.lifecycle != EndpointLifecycle.DESTROYED, Endpoint.kind == "service"]
    conds.append(endpoint_visibility(caller))
    if body.filter and body.filter.name:
        conds.extend(_string_condition(Endpoint.name, body.filter.name))
    async with request.app[CTX].db() as db:
        total = (await db.execute(sa.select(sa.func.count()).select_from(Endpoint).where(*conds))).scalar_one()
        # newest first for destroyed services (the recent ones matter), creation order for live ones
        order = Endpoint.created_at.desc() if destroyed else Endpoint.created_at
        endpoints = list((await db.execute(sa.select(Endpoint).where(*conds).order_by(order, Endpoint.id)
                                           .offset(body.offset).limit(body.limit))).scalars())
        page_ids = [e.id for e in endpoints]
        counts = dict((await db.execute(
            sa.select(Route.endpoint_id, sa.func.count()).where(
                Route.endpoint_id.in_(page_ids), route_active_clause())
                .group_by(Route.endpoint_id))).all())
        route_states: dict[uuid.UUID, list[tuple[RouteLifecycle, RouteHealth]]] = defaultdict(list)
        for endpoint_id, lifecycle, health in (await db.execute(
                sa.select(Route.endpoint_id, Route.lifecycle, Route.health).where(
                    Route.endpoint_id.in_(page_ids), Route.lifecycle != RouteLifecycle.TERMINATED))).all():
            route_states[endpoint_id].append((lifecycle, health))
        owners = dict((await db.execute(sa.select(User.id, User.email).where(
            User.id.in_({e.owner_id for e in endpoints})))).all())
    items = [SearchItem(id=e.id, name=e.name, replicas=e.replicas, desired_session_count=e.replicas,
                        active_route_count=counts.get(e.id, 0), service_endpoint=e.url,
                        resource_slots=e.resource_slots, resource_group=e.scaling_group,
                        open_to_public=e.open_to_public,
                        status=derive_endpoint_status(e.lifecycle, e.replicas, route_states.get(e.id, [])).value,
                        owner=owners.get(e.owner_id),
                        created_at=e.created_at.isoformat() if e.created_at else None) for e in endpoints]
    result = SearchServicesResponse(items=items, pagination=Pagination(total=total, offset=body.offset,
                                                                       limit=body.limit))
    return json_response(result.model_dump(mode="json"))


@routes.get("/services/_/runtimes")
async def list_runtimes(request: web.Request) -> web.Response:
    runtimes = [{"name": name, "human_readable_name": label} for name, label in RUNTIME_VARIANT_LABELS.items()]
    return json_response(RuntimesResponse.model_validate({"runtimes": runtimes}).model_dump(mode="json"))


@routes.post("/services/{service_id}/sync")
async def sync_service(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    async with ctx.db() as db:
        endpoint = await load_endpoint(db, caller_of(request), request.match_info["service_id"])
    await publish_endpoints(ctx, {endpoint.id}, force=True)
    ctx.poke(endpoint.id)  # on a follower: the leader republishes too, so the newest table wins
    return json_response({"success": True})


@routes.post("/services/_/try")
async def try_service(request: web.Request) -> web.Response:
    """Validate synchronously (400/404 at once), then start a real replica in the background and report."""
    ctx = request.app[CTX]
    caller = caller_of(request)
    body = await parse_body(request, NewServiceRequest)
    async with ctx.db() as db:
        owner, folder, resolved = await resolve_create_request(ctx, db, caller, body)

    def dry_run_endpoint(**fields: Any) -> Endpoint:  # built in the background task, as before
        return new_endpoint(body.model_copy(update={"replicas": 1}), owner, owner, folder.id, resolved, **fields)

    task = ctx.bgtasks.start(caller.user_id, lambda t: run_dry_run(ctx, t, dry_run_endpoint, resolved.definition))
    return json_response(TaskResponse(task_id=task.id, name=body.name).model_dump(mode="json"))


@routes.get("/events/background-task")
async def background_task_events(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    caller = caller_of(request)
    raw = request.query.get("task_id")
    if not raw:
        raise InvalidAPIParameters("task_id: required")
    task = ctx.bgtasks.get(parse_uuid(raw, "task_id"))
    if task is not None and task.owner != caller.user_id:
        async with ctx.db() as db:
            if not await can_act_for(db, caller, task.owner):
                task = None
    if task is None:
        raise ObjectNotFound(f"background task {raw} not found")
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    async for event, data in ctx.bgtasks.follow(task):
        if not event:
            await response.write(b": keep-alive\n\n")
            continue
        await response.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
    await response.write(b"event: server_close\ndata: {}\n\n")
    await response.write_eof()
    return response


__all__ = ["routes", "uuid"]
