"""Changing a running service without downtime (``PATCH /services/{service_id}``, our extension).

A change to what a replica runs bumps the endpoint's ``revision``; the control loop then rolls the routes over
(manager/control/planner.py): new routes start (at most ``max_surge`` extra at a time) and an old route retires
only once enough new ones are healthy. Changing only ``replicas``, ``open_to_public``, ``cors_allowed_origins``
or ``max_surge`` does not; ``network_outbound`` does (the agent applies it when it starts a replica).
"""

from __future__ import annotations

import uuid
from collections.abc import Set
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from common.errors import InvalidAPIParameters
from common.status import EndpointLifecycle
from manager.config import ManagerConfig
from manager.db.models import Endpoint, Event, ModelFolder
from manager.endpoints import find_folder, resolve_service
from manager.ownership import Caller
from manager.services.model import ServiceSnapshot, ServiceUpdateSpec
from manager.services.read import Sessions, load_endpoint, snapshot
from manager.services.write import check_replica_limit

# Endpoint columns that define what a replica runs; any change to one of them is a new revision.
SPEC_FIELDS = ("model_folder_id", "runtime_variant", "model_definition_path", "model_definition", "image",
               "environ", "resource_slots", "resource_opts", "network_outbound")
# Request fields that make the manager resolve the definition and resources again.
RESOLVE_FIELDS = frozenset({"model", "model_definition_path", "runtime_variant", "image", "environ", "resources",
                            "resource_opts"})


def _spec(endpoint: Endpoint) -> dict[str, Any]:
    return {name: getattr(endpoint, name) for name in SPEC_FIELDS}


async def _folder(db: AsyncSession, caller: Caller, endpoint: Endpoint, ref: str | None) -> ModelFolder:
    if ref is not None:
        # names resolve among the endpoint owner's folders (an admin may update a user's service)
        return await find_folder(db, Caller(endpoint.owner_id, caller.access_key, caller.role, caller.domain), ref)
    folder = await db.get(ModelFolder, endpoint.model_folder_id) if endpoint.model_folder_id else None
    if folder is None:
        raise InvalidAPIParameters("model: the service's model folder was deleted; name a folder to update")
    return folder


def check_update(config: ManagerConfig, body: ServiceUpdateSpec, given: Set[str]) -> None:
    """400 when the request changes nothing or asks for more replicas than allowed."""
    if not given and not body.redeploy:
        raise InvalidAPIParameters("body: nothing to update (give at least one field, or redeploy: true)")
    if body.replicas is not None:
        check_replica_limit(config, body.replicas, "replicas")


async def update_service(sessions: Sessions, config: ManagerConfig, caller: Caller, endpoint_id: uuid.UUID,
                         shown: str | None = None, *, body: ServiceUpdateSpec, given: Set[str]
                         ) -> tuple[ServiceSnapshot, list[str]]:
    """Apply the fields in ``given`` (the request's keys, less ``redeploy``). Returns the service as it is now and
    the replica-defining columns that changed."""
    check_update(config, body, given)
    async with sessions() as db:
        endpoint = await load_endpoint(db, caller, endpoint_id, shown)
        if endpoint.lifecycle != EndpointLifecycle.CREATED or endpoint.kind != "service":
            raise InvalidAPIParameters("service_id: the service is being destroyed")
        before = _spec(endpoint)
        if given & RESOLVE_FIELDS or body.redeploy:
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
                config, folder, variant, definition_path, body.image or endpoint.image, endpoint.architecture,
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
        if body.cors_allowed_origins is not None:  # published with the route table: the caller republishes
            endpoint.cors_allowed_origins = body.cors_allowed_origins
        if "route_capacity" in given:  # likewise; null: back to the proxies' default
            endpoint.route_capacity = body.route_capacity
        if body.model_aliases is not None:  # likewise (the whole list)
            endpoint.model_aliases = body.model_aliases
        if "engine_model_name" in given:  # likewise; null: pass the client's model through
            endpoint.engine_model_name = body.engine_model_name
        db.add(Event(endpoint_id=endpoint.id, kind="endpoint_updated", data={
            "by": caller.access_key, "revision": endpoint.revision, "changed": changed,
            "redeploy": body.redeploy, "fields": sorted(given)}))
        await db.commit()
        return await snapshot(db, endpoint), changed
