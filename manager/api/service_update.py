"""``PATCH /services/{service_id}`` (our extension): change a running service without downtime.

A change to what a replica runs bumps the endpoint's ``revision``; the control loop then rolls the routes over
(manager/control/planner.py): new routes start (at most ``max_surge`` extra at a time) and an old route retires
only once enough new ones are healthy. Changing only ``replicas``, ``open_to_public``, ``cors_allowed_origins``
or ``max_surge`` does not; ``network_outbound`` does (the agent applies it when it starts a replica).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from common.errors import InvalidAPIParameters
from common.status import EndpointLifecycle
from manager.api.auth import caller_of
from manager.api.schemas import UpdateServiceRequest
from manager.api.services import _routes_with_sessions, check_replica_limit, load_endpoint, serve_info
from manager.api.util import json_response, parse_body
from manager.context import CTX
from manager.db.models import Endpoint, Event, ModelFolder
from manager.endpoints import find_folder, resolve_service
from manager.ownership import Caller

routes = web.RouteTableDef()

# Endpoint columns that define what a replica runs; any change to one of them is a new revision.
SPEC_FIELDS = ("model_folder_id", "runtime_variant", "model_definition_path", "model_definition", "image",
               "environ", "resource_slots", "resource_opts", "network_outbound")


def _spec(endpoint: Endpoint) -> dict[str, Any]:
    return {name: getattr(endpoint, name) for name in SPEC_FIELDS}


async def _folder(db, caller: Caller, endpoint: Endpoint, ref: str | None) -> ModelFolder:
    if ref is not None:
        # names resolve among the endpoint owner's folders (an admin may update a user's service)
        return await find_folder(db, Caller(endpoint.owner_id, caller.access_key, caller.role, caller.domain), ref)
    folder = await db.get(ModelFolder, endpoint.model_folder_id) if endpoint.model_folder_id else None
    if folder is None:
        raise InvalidAPIParameters("model: the service's model folder was deleted; name a folder to update")
    return folder


@routes.patch("/services/{service_id}")
async def update_service(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    caller = caller_of(request)
    body = await parse_body(request, UpdateServiceRequest)
    given = body.model_fields_set - {"redeploy"}
    if not given and not body.redeploy:
        raise InvalidAPIParameters("body: nothing to update (give at least one field, or redeploy: true)")
    if body.replicas is not None:
        check_replica_limit(ctx, body.replicas, "replicas")
    async with ctx.db() as db:
        endpoint = await load_endpoint(db, caller, request.match_info["service_id"])
        if endpoint.lifecycle != EndpointLifecycle.CREATED or endpoint.kind != "service":
            raise InvalidAPIParameters("service_id: the service is being destroyed")
        before = _spec(endpoint)
        if given & {"model", "model_definition_path", "runtime_variant", "image", "environ", "resources",
                    "resource_opts"} or body.redeploy:
            folder = await _folder(db, caller, endpoint, body.model)
            same_folder = folder.id == endpoint.model_folder_id
            variant = body.runtime_variant or endpoint.runtime_variant
            if "model_definition_path" in given:
                definition_path = body.model_definition_path
            elif same_folder and variant == endpoint.runtime_variant:
                definition_path = endpoint.model_definition_path  # the file it was created with
            else:
                definition_path = None  # another folder or variant: look for the default file names again
            resolved = resolve_service(
                ctx.config, folder, variant, definition_path, body.image or endpoint.image, endpoint.architecture,
                body.resources if body.resources is not None else endpoint.resource_slots,
                body.resource_opts if body.resource_opts is not None else endpoint.resource_opts,
                body.environ if body.environ is not None else endpoint.environ,
                mount=endpoint.model_mount_destination, service_name=endpoint.name)
            endpoint.model_folder_id = folder.id
            endpoint.runtime_variant = variant
            endpoint.model_definition_path = resolved.definition_path
            endpoint.model_definition = resolved.definition
            endpoint.image = resolved.defaults.image
            endpoint.environ = resolved.defaults.environ
            endpoint.resource_slots = resolved.slots.to_json()
            endpoint.resource_opts = resolved.defaults.resource_opts
        if body.network_outbound is not None:
            endpoint.network_outbound = body.network_outbound
        changed = sorted(k for k, v in _spec(endpoint).items() if v != before[k])
        if changed or body.redeploy:
            endpoint.revision += 1
            endpoint.retries, endpoint.next_retry_at = 0, None  # a new revision gets a fresh back-off
        if body.replicas is not None:
            endpoint.replicas = body.replicas
        if body.open_to_public is not None:
            endpoint.open_to_public = body.open_to_public
        if body.max_surge is not None:
            endpoint.max_surge = body.max_surge
        if body.cors_allowed_origins is not None:  # published with the route table: the poke below republishes
            endpoint.cors_allowed_origins = body.cors_allowed_origins
        db.add(Event(endpoint_id=endpoint.id, kind="endpoint_updated", data={
            "by": caller.access_key, "revision": endpoint.revision, "changed": changed,
            "redeploy": body.redeploy, "fields": sorted(given)}))
        await db.commit()
        rows = await _routes_with_sessions(db, [endpoint.id])
    ctx.poke(endpoint.id)
    info = serve_info(endpoint, rows)
    info["changed"] = changed
    return json_response(info)
