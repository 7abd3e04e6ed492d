"""``/services``: the Backend.AI-compatible service launcher API (docs/architecture.md, Service API).

The handlers parse the request, call the service domain (``manager.services``) and render with
``manager.api.views``."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from manager.api.auth import caller_of
from manager.api.schemas import ErrorsResponse, NewServiceRequest, ScaleRequest, ScaleResponse
from manager.api.util import json_response, parse_body, parse_uuid, service_ref
from manager.api.views.endpoint import compact_serve_info, serve_info
from manager.api.views.route import route_error
from manager.context import CTX
from manager.db.models import Endpoint
from manager.ownership import Caller
from manager.services import read, write
from manager.services.model import ServiceSnapshot

routes = web.RouteTableDef()


async def load_endpoint(db: AsyncSession, caller: Caller, service_id: str) -> Endpoint:
    """A live endpoint the caller may see, by the ``{service_id}`` path parameter; 400 if it is not a UUID, 404
    if unknown or foreign (never leak existence). For handlers that work inside their own session."""
    return await read.load_endpoint(db, caller, parse_uuid(service_id, "service_id"), service_id)


@routes.get("/services")
async def list_services(request: web.Request) -> web.Response:
    """The compact list (only the columns it shows: see manager.services.read.list_services)."""
    summaries = await read.list_services(request.app[CTX].db, caller_of(request), request.query.get("name"),
                                         everyone=request.query.get("all") == "true")
    return json_response([compact_serve_info(s) for s in summaries])


@routes.post("/services")
async def create_service(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    body = await parse_body(request, NewServiceRequest)
    endpoint = await write.create_service(ctx.db, ctx.config, caller_of(request), body)
    ctx.poke(endpoint.id)
    return json_response(serve_info(ServiceSnapshot(endpoint, [])), status=201)


@routes.get("/services/{service_id}")
async def get_service(request: web.Request) -> web.Response:
    snapshot = await read.get_service(request.app[CTX].db, caller_of(request), *service_ref(request))
    return json_response(serve_info(snapshot))


@routes.delete("/services/{service_id}")
async def delete_service(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    endpoint_id = await write.destroy_service(ctx.db, caller_of(request), *service_ref(request))
    ctx.poke(endpoint_id)
    return json_response({"success": True})


@routes.post("/services/{service_id}/scale")
async def scale_service(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    body = await parse_body(request, ScaleRequest)
    write.check_replica_limit(ctx.config, body.to, "to")  # before the id: a 400 on the body comes first
    endpoint_id, shown = service_ref(request)
    endpoint_id, result = await write.scale_service(ctx.db, ctx.config, caller_of(request), endpoint_id, body.to,
                                                    shown)
    ctx.poke(endpoint_id)
    return json_response(ScaleResponse(current_route_count=result.current_route_count,
                                       target_count=result.target_count).model_dump())


@routes.get("/services/{service_id}/errors")
async def list_errors(request: web.Request) -> web.Response:
    endpoint, failed = await read.failed_routes(request.app[CTX].db, caller_of(request), *service_ref(request))
    return json_response(ErrorsResponse(errors=[route_error(r) for r in failed],
                                        retries=endpoint.retries).model_dump(mode="json"))


@routes.post("/services/{service_id}/errors/clear")
async def clear_errors(request: web.Request) -> web.Response:
    """Forget failed starts and retry now, with the folder's model definition read again."""
    ctx = request.app[CTX]
    endpoint_id = await write.clear_errors(ctx.db, ctx.config, caller_of(request), *service_ref(request))
    ctx.poke(endpoint_id)
    return web.Response(status=204)
