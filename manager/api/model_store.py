"""``/model-store``: cards for the model folders that hold both definitions, and **Run this model**, which creates
a service from a folder's definitions in one call (docs/console-api.md, "Model Store")."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from aiohttp import web
from pydantic import ValidationError

from common.errors import Conflict, InvalidAPIParameters, invalid_params_from_validation
from common.status import EndpointLifecycle
from manager import model_store
from manager.addresses import insert_endpoint
from manager.api.auth import caller_of
from manager.api.console_schemas import RunModelRequest, StoreList
from manager.api.fields import SERVICE_NAME_MAX, SERVICE_NAME_MIN
from manager.api.folder_files import query_int
from manager.api.schemas import NewServiceRequest
from manager.api.services import new_endpoint, resolve_create_request, serve_info
from manager.api.util import json_response, parse_body, parse_uuid
from manager.context import CTX
from manager.db.models import Endpoint, Event, ModelFolder
from manager.endpoints import find_folder
from manager.ownership import owner_visibility

routes = web.RouteTableDef()
DEFAULT_PAGE = 50
MAX_PAGE = 200


@routes.get("/model-store")
async def list_store(request: web.Request) -> web.Response:
    """The model folders the caller may use (users: their own; admins: as for services) that hold both files."""
    ctx = request.app[CTX]
    caller = caller_of(request)
    offset = query_int(request, "offset", 0, 0, 10**9)
    limit = query_int(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
    async with ctx.db() as db:
        folders = list((await db.execute(
            sa.select(ModelFolder).where(owner_visibility(caller, ModelFolder.owner_id),
                                         ModelFolder.usage_mode == "model")
            .order_by(ModelFolder.name, ModelFolder.id).limit(ctx.config.files.max_store_folders))).scalars())
    storage = Path(ctx.config.manager.storage_root)

    def cards() -> list[dict[str, Any]]:
        found = [f for f in folders if model_store.in_store(storage / f.host_relpath)]
        return [model_store.card(storage / f.host_relpath, f) for f in found]

    all_cards = await asyncio.to_thread(cards)
    page = StoreList(items=all_cards[offset:offset + limit], total=len(all_cards), offset=offset, limit=limit)
    return json_response(page.model_dump(mode="json"))


@routes.post("/model-store/{folder_id}/run")
async def run_model(request: web.Request) -> web.Response:
    """Create a service from the folder's service definition (the same checks and rows as ``POST /services``)."""
    ctx = request.app[CTX]
    caller = caller_of(request)
    folder_id = parse_uuid(request.match_info["folder_id"], "folder_id")
    body = await parse_body(request, RunModelRequest)
    async with ctx.db() as db:
        folder = await find_folder(db, caller, str(folder_id))
        taken = set((await db.execute(sa.select(Endpoint.name).where(
            Endpoint.owner_id == caller.user_id, Endpoint.lifecycle != EndpointLifecycle.DESTROYED))).scalars())
    root = Path(ctx.config.manager.storage_root) / folder.host_relpath
    if folder.usage_mode != "model" or not model_store.in_store(root):
        raise InvalidAPIParameters(f"folder_id: folder {folder.name!r} is not in the Model Store (a model folder "
                                   "with model-definition.yaml and service-definition.toml)")
    name = body.name or model_store.service_name_for(folder.name, taken, SERVICE_NAME_MIN, SERVICE_NAME_MAX)
    if name is None:
        raise Conflict("name: no free service name derived from the folder's; give one")
    variant = body.runtime_variant or (await asyncio.to_thread(model_store.card, root, folder))["runtime_variant"]
    try:
        request_body = NewServiceRequest.model_validate({
            "name": name, "replicas": body.replicas, "runtime_variant": variant,
            "open_to_public": body.open_to_public, "config": {"model": str(folder.id)}})
    except ValidationError as exc:
        raise invalid_params_from_validation(exc) from None
    async with ctx.db() as db:
        owner, _, resolved = await resolve_create_request(ctx, db, caller, request_body)
        if name in taken:
            raise Conflict(f"name: a service named {name!r} already exists")

    def rows(port: int | None, subdomain: str | None, url: str) -> list[Any]:
        endpoint = new_endpoint(request_body, owner, caller, folder.id, resolved, name=name, kind="service",
                                port=port, url=url)
        endpoint.subdomain = subdomain
        return [endpoint, Event(endpoint_id=endpoint.id, kind="endpoint_created",
                                data={"replicas": body.replicas, "by": caller.access_key,
                                      "from_model_store": str(folder.id)})]

    endpoint = await insert_endpoint(ctx.db, ctx.config, owner.user_id, name, rows)
    ctx.poke(endpoint.id)
    return json_response(serve_info(endpoint, []), status=201)



