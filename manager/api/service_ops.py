"""``/services/_/search``, ``/services/_/runtimes``, ``/services/{id}/sync`` and ``/services/_/try`` (dry run),
plus the SSE stream of background tasks (``GET /events/background-task?task_id=``)."""

from __future__ import annotations

import json

from aiohttp import web

from common.errors import InvalidAPIParameters, ObjectNotFound
from manager.api.auth import caller_of
from manager.api.schemas import (
    NewServiceRequest,
    Pagination,
    RuntimesResponse,
    SearchServicesRequest,
    SearchServicesResponse,
    TaskResponse,
)
from manager.api.util import json_response, parse_body, parse_uuid, service_ref
from manager.api.views.endpoint import search_item
from manager.context import CTX
from manager.control.publisher import publish_endpoints
from manager.dryrun import run_dry_run
from manager.endpoints import RUNTIME_VARIANT_LABELS
from manager.ownership import can_act_for
from manager.services import read, write

routes = web.RouteTableDef()


@routes.post("/services/_/search")
async def search_services(request: web.Request) -> web.Response:
    caller = caller_of(request)
    body = await parse_body(request, SearchServicesRequest)
    name = body.filter.name if body.filter else None
    page = await read.search_services(request.app[CTX].db, caller,
                                      read.NameFilter(**name.model_dump()) if name else None, body.offset, body.limit,
                                      destroyed=body.lifecycle == "destroyed")
    items = [search_item(e, page) for e in page.endpoints]
    result = SearchServicesResponse(items=items, pagination=Pagination(total=page.total, offset=body.offset,
                                                                       limit=body.limit))
    return json_response(result.model_dump(mode="json"))


@routes.get("/services/_/runtimes")
async def list_runtimes(request: web.Request) -> web.Response:
    runtimes = [{"name": name, "human_readable_name": label} for name, label in RUNTIME_VARIANT_LABELS.items()]
    return json_response(RuntimesResponse.model_validate({"runtimes": runtimes}).model_dump(mode="json"))


@routes.post("/services/{service_id}/sync")
async def sync_service(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    endpoint_id = (await read.visible_endpoint(ctx.db, caller_of(request), *service_ref(request))).id
    await publish_endpoints(ctx, {endpoint_id}, force=True)
    ctx.poke(endpoint_id)  # on a follower: the leader republishes too, so the newest table wins
    return json_response({"success": True})


@routes.post("/services/_/try")
async def try_service(request: web.Request) -> web.Response:
    """Validate synchronously (400/404 at once), then start a real replica in the background and report."""
    ctx = request.app[CTX]
    caller = caller_of(request)
    body = await parse_body(request, NewServiceRequest)
    dry_run_endpoint, definition = await write.prepare_dry_run(ctx.db, ctx.config, caller, body)
    task = ctx.bgtasks.start(caller.user_id, lambda t: run_dry_run(ctx, t, dry_run_endpoint, definition))
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
