"""``PATCH /services/{service_id}`` (our extension): change a running service without downtime (the rules:
manager/services/update.py)."""

from __future__ import annotations

from aiohttp import web

from manager.api.auth import caller_of
from manager.api.schemas import UpdateServiceRequest
from manager.api.util import json_response, parse_body, service_ref
from manager.api.views.endpoint import serve_info
from manager.context import CTX
from manager.services import update

routes = web.RouteTableDef()


@routes.patch("/services/{service_id}")
async def update_service(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    body = await parse_body(request, UpdateServiceRequest)
    given = body.model_fields_set - {"redeploy"}
    update.check_update(ctx.config, body, given)  # before the id: a 400 on the body comes first
    snapshot, changed = await update.update_service(ctx.db, ctx.config, caller_of(request), *service_ref(request),
                                                    body=body, given=given)
    ctx.poke(snapshot.endpoint.id)
    info = serve_info(snapshot)
    info["changed"] = changed
    return json_response(info)
