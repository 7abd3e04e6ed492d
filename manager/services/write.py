"""Changing services: create (and the checks a dry run shares), destroy, scale, clear failed routes."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from common.errors import InvalidAPIParameters, ObjectNotFound
from common.status import EndpointLifecycle, RouteLifecycle
from manager.addresses import insert_endpoint
from manager.config import ManagerConfig
from manager.db.models import Endpoint, Event, KeyPair, ModelFolder, Route, User
from manager.endpoints import ResolvedService, ensure_unique_name, find_folder, resolve_service
from manager.ownership import Caller, can_act_for
from manager.services.model import NewServiceSpec, ScaleResult
from manager.services.read import Sessions, load_endpoint


def check_replica_limit(config: ManagerConfig, count: int, field: str) -> None:
    """400 naming ``field`` when ``count`` exceeds the per-endpoint replica limit."""
    if count > config.limits.max_replicas:
        raise InvalidAPIParameters(f"{field}: at most {config.limits.max_replicas}")


async def resolve_create_request(config: ManagerConfig, db: AsyncSession, caller: Caller, body: NewServiceSpec
                                 ) -> tuple[Caller, ModelFolder, ResolvedService]:
    """Checks shared by create and try: owner, folder, definition, resources. Returns (owner, folder, resolved)."""
    check_replica_limit(config, body.replicas, "replicas")
    owner = caller
    if body.owner_access_key and body.owner_access_key != caller.access_key:
        if not caller.is_admin:
            raise InvalidAPIParameters("owner_access_key: only administrators may create on behalf of others")
        kp = await db.get(KeyPair, body.owner_access_key)
        owner_user = await db.get(User, kp.user_id) if kp is not None else None
        # A domain admin acts only for users of its domain; others' keys read as unknown (no existence leak).
        if kp is None or owner_user is None or not await can_act_for(db, caller, kp.user_id):
            raise InvalidAPIParameters("owner_access_key: no such keypair")
        owner = Caller(kp.user_id, kp.access_key, kp.role, owner_user.domain_name)
    folder = await find_folder(db, owner, body.config.model)
    if owner is not caller and not await can_act_for(db, caller, folder.owner_id):
        raise ObjectNotFound(f"model folder {body.config.model!r} not found")  # the owner's reach, not the caller's
    resolved = resolve_service(
        config, folder, body.runtime_variant, body.config.model_definition_path, body.image,
        body.architecture, body.config.resources, body.config.resource_opts, body.config.environ,
        mount=body.config.model_mount_destination, service_name=body.name)
    return owner, folder, resolved


def new_endpoint(body: NewServiceSpec, owner: Caller, caller: Caller, folder_id: uuid.UUID,
                 resolved: ResolvedService, *, name: str, kind: str, port: int | None, url: str | None) -> Endpoint:
    return Endpoint(
        id=uuid.uuid4(), name=name, kind=kind, owner_id=owner.user_id, created_user_id=caller.user_id,
        domain_name=body.domain, project_name=body.group, scaling_group=body.config.scaling_group,
        model_folder_id=folder_id, model_definition_path=resolved.definition_path,
        model_definition=resolved.definition, model_mount_destination=body.config.model_mount_destination,
        runtime_variant=body.runtime_variant, image=resolved.defaults.image,
        architecture=resolved.defaults.architecture or "x86_64", environ=resolved.defaults.environ,
        resource_slots=resolved.slots.to_json(), resource_opts=resolved.defaults.resource_opts,
        extra_mounts=body.config.extra_mounts, tag=body.tag, startup_command=body.startup_command,
        bootstrap_script=body.bootstrap_script, callback_url=body.callback_url,
        cluster_mode=body.cluster_mode, cluster_size=body.cluster_size, replicas=body.replicas,
        open_to_public=body.open_to_public, cors_allowed_origins=body.cors_allowed_origins,
        network_outbound=body.network_outbound, route_capacity=body.route_capacity,
        model_aliases=body.model_aliases, engine_model_name=body.engine_model_name,
        proxy_port=port, url=url, lifecycle=EndpointLifecycle.CREATED,
    )


async def create_service(sessions: Sessions, config: ManagerConfig, caller: Caller, body: NewServiceSpec,
                         event_extra: dict[str, Any] | None = None) -> Endpoint:
    """A new endpoint (no routes yet: the control loop starts them) with its address, and its creation event
    (``event_extra`` adds to the event's data, e.g. which Model Store card started it)."""
    async with sessions() as db:
        owner, folder, resolved = await resolve_create_request(config, db, caller, body)
        await ensure_unique_name(db, owner.user_id, body.name)
        folder_id = folder.id

    def rows(port: int | None, subdomain: str | None, url: str) -> list[Any]:
        endpoint = new_endpoint(body, owner, caller, folder_id, resolved, name=body.name, kind="service",
                                port=port, url=url)
        endpoint.subdomain = subdomain
        return [endpoint, Event(endpoint_id=endpoint.id, kind="endpoint_created",
                                data={"replicas": body.replicas, "by": caller.access_key, **(event_extra or {})})]

    return await insert_endpoint(sessions, config, owner.user_id, body.name, rows)


async def prepare_dry_run(sessions: Sessions, config: ManagerConfig, caller: Caller, body: NewServiceSpec
                          ) -> tuple[Callable[..., Endpoint], dict[str, Any]]:
    """Validate a dry run now (400/404 at once). Returns what the background run needs: a factory of its
    one-replica endpoint (manager.dryrun builds it with its own name, port and URL) and the resolved
    definition."""
    async with sessions() as db:
        owner, folder, resolved = await resolve_create_request(config, db, caller, body)

    def dry_run_endpoint(**fields: Any) -> Endpoint:
        endpoint = new_endpoint(body, owner, owner, folder.id, resolved, **fields)
        endpoint.replicas = 1
        return endpoint

    return dry_run_endpoint, resolved.definition


async def destroy_service(sessions: Sessions, caller: Caller, endpoint_id: uuid.UUID, shown: str | None = None
                          ) -> uuid.UUID:
    """Mark the endpoint for destruction (the control loop stops its routes). A second call: 404."""
    async with sessions() as db:
        endpoint = await load_endpoint(db, caller, endpoint_id, shown)
        if endpoint.lifecycle != EndpointLifecycle.CREATED:  # a second DELETE: it is already going away
            raise ObjectNotFound(f"service {endpoint.id} not found (it is being destroyed)")
        endpoint.lifecycle = EndpointLifecycle.DESTROYING
        endpoint.replicas = 0
        db.add(Event(endpoint_id=endpoint.id, kind="endpoint_destroy_requested", data={}))
        await db.commit()
        return endpoint.id


async def scale_service(sessions: Sessions, config: ManagerConfig, caller: Caller, endpoint_id: uuid.UUID,
                        to: int, shown: str | None = None) -> tuple[uuid.UUID, ScaleResult]:
    check_replica_limit(config, to, "to")
    async with sessions() as db:
        endpoint = await load_endpoint(db, caller, endpoint_id, shown)
        if endpoint.lifecycle != EndpointLifecycle.CREATED:
            raise InvalidAPIParameters("the service is being destroyed")
        current = (await db.execute(sa.select(sa.func.count()).select_from(Route).where(
            Route.endpoint_id == endpoint.id,
            Route.lifecycle.in_([RouteLifecycle.PROVISIONING, RouteLifecycle.RUNNING])))).scalar_one()
        endpoint.replicas = to
        db.add(Event(endpoint_id=endpoint.id, kind="endpoint_scaled", data={"to": to}))
        await db.commit()
        return endpoint.id, ScaleResult(current_route_count=current, target_count=to)


async def reread_definition(config: ManagerConfig, db: AsyncSession, endpoint: Endpoint) -> bool:
    """Read the folder's model definition again (the user may have fixed the file that made the replicas fail):
    a changed definition is stored as a new revision; a still-invalid one is a 400 naming the problem."""
    folder = await db.get(ModelFolder, endpoint.model_folder_id) if endpoint.model_folder_id else None
    if folder is None:
        return False
    resolved = resolve_service(config, folder, endpoint.runtime_variant, endpoint.model_definition_path,
                               endpoint.image, endpoint.architecture, endpoint.resource_slots, endpoint.resource_opts,
                               endpoint.environ, mount=endpoint.model_mount_destination, service_name=endpoint.name)
    if resolved.definition == endpoint.model_definition:
        return False
    endpoint.model_definition = resolved.definition
    endpoint.revision += 1
    db.add(Event(endpoint_id=endpoint.id, kind="endpoint_updated", data={
        "revision": endpoint.revision, "changed": ["model_definition"], "by": "errors/clear"}))
    return True


async def clear_errors(sessions: Sessions, config: ManagerConfig, caller: Caller, endpoint_id: uuid.UUID,
                       shown: str | None = None) -> uuid.UUID:
    """Forget the routes that failed to start and reset the back-off, with the folder's model definition read
    again (docs/console.md: fix the file, then Clear error and Retry)."""
    async with sessions() as db:
        endpoint = await load_endpoint(db, caller, endpoint_id, shown)
        if endpoint.lifecycle == EndpointLifecycle.CREATED:
            await reread_definition(config, db, endpoint)
        await db.execute(sa.delete(Route).where(Route.endpoint_id == endpoint.id,
                                                Route.lifecycle == RouteLifecycle.FAILED_TO_START))
        endpoint.retries = 0
        endpoint.next_retry_at = None
        await db.commit()
        return endpoint.id
