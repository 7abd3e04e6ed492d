"""``/services``: the Backend.AI-compatible service launcher API (docs/architecture.md, Service API)."""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import Any

import sqlalchemy as sa
from aiohttp import web

from common.errors import InvalidAPIParameters, ObjectNotFound
from common.protocol import UNSANDBOXED_RUNTIME
from common.status import (
    LIVE_ROUTE_LIFECYCLES,
    EndpointLifecycle,
    RouteHealth,
    RouteLifecycle,
    RouteTraffic,
    UserRole,
    route_active,
    route_ready,
)
from manager.addresses import insert_endpoint
from manager.api.auth import caller_of
from manager.api.schemas import CompactServeInfo, NewServiceRequest, ScaleRequest, ScaleResponse, ServeInfo
from manager.api.util import json_response, parse_body, parse_uuid
from manager.context import CTX
from manager.db.models import Agent, Endpoint, Event, KeyPair, ModelFolder, Route, Session, User
from manager.endpoint_status import derive_endpoint_status
from manager.endpoints import ResolvedService, ensure_unique_name, find_folder, resolve_service
from manager.ownership import Caller, can_act_for, can_see_endpoint, endpoint_visibility

routes = web.RouteTableDef()


async def load_endpoint(db, caller: Caller, service_id: str) -> Endpoint:
    """A live endpoint the caller may see. Foreign or unknown ids are both 404: never leak existence."""
    endpoint_id = parse_uuid(service_id, "service_id")
    endpoint = await db.get(Endpoint, endpoint_id)
    if (endpoint is None or endpoint.lifecycle == EndpointLifecycle.DESTROYED
            or not await can_see_endpoint(db, caller, endpoint)):
        raise ObjectNotFound(f"service {service_id} not found")
    return endpoint


async def _routes_with_sessions(db, endpoint_ids: list[uuid.UUID]):
    """(route, session or None, the session's agent's runtime or None) of the endpoints' unterminated routes."""
    if not endpoint_ids:
        return []
    rows = await db.execute(
        sa.select(Route, Session, Agent.runtime).outerjoin(Session, Session.id == Route.session_id)
        .outerjoin(Agent, Agent.id == Session.agent_id)
        .where(Route.endpoint_id.in_(endpoint_ids), Route.lifecycle != RouteLifecycle.TERMINATED)  # history grows
        .order_by(Route.created_at))
    return rows.all()


def _sandboxed(runtime: str | None) -> bool:
    """False only for a replica on an agent that runs replicas without a sandbox (docs/security.md)."""
    return runtime != UNSANDBOXED_RUNTIME


def _route_json(route: Route, session: Session | None, runtime: str | None) -> dict[str, Any]:
    return {
        "route_id": str(route.id),
        "session_id": str(route.session_id) if route.session_id else None,
        "lifecycle": route.lifecycle.value,
        "status": route.lifecycle.value,
        "health": route.health.value,
        "traffic": route.traffic.value,
        "traffic_ratio": route.traffic_ratio,
        "agent": session.agent_id if session else None,
        "host": session.host if session else None,
        "port": session.port if session else None,
        "error_data": route.error_data,
        "created_at": route.created_at.isoformat() if route.created_at else None,
        "revision": route.revision,
        "sandboxed": _sandboxed(runtime),
    }


def rollout_state(endpoint: Endpoint, routes: list[Route]) -> dict[str, Any] | None:
    """While live routes run another revision than the endpoint's: how far the rolling update is."""
    live = [r for r in routes if r.lifecycle in LIVE_ROUTE_LIFECYCLES]
    outdated = [r for r in live if r.revision != endpoint.revision]
    if not outdated:
        return None
    current = [r for r in live if r.revision == endpoint.revision]
    serving = [r for r in current if route_ready(r.lifecycle, r.health)]
    return {"revision": endpoint.revision, "current": len(current), "current_serving": len(serving),
            "outdated": len(outdated)}


def _visible(route: Route) -> bool:
    return route.lifecycle != RouteLifecycle.TERMINATED


def serve_info(endpoint: Endpoint, rows: list) -> dict[str, Any]:
    """Backend.AI's ServeInfo plus our extensions: status, retries, routes."""
    return ServeInfo.model_validate(_serve_info_fields(endpoint, rows)).model_dump(mode="json")


def _serve_info_fields(endpoint: Endpoint, rows: list) -> dict[str, Any]:
    own = [(r, s, runtime) for r, s, runtime in rows if r.endpoint_id == endpoint.id]
    active = [(r, runtime) for r, _, runtime in own if route_active(r.lifecycle, r.traffic)]
    status = derive_endpoint_status(endpoint.lifecycle, endpoint.replicas,
                                    [(r.lifecycle, r.health) for r, _, _ in own if _visible(r)])
    return {
        "endpoint_id": str(endpoint.id),
        "model_id": str(endpoint.model_folder_id) if endpoint.model_folder_id else None,
        "extra_mounts": list(endpoint.extra_mounts or {}),
        "name": endpoint.name,
        "replicas": endpoint.replicas,
        "desired_session_count": endpoint.replicas,
        "model_definition_path": endpoint.model_definition_path,
        "active_routes": [{"route_id": str(r.id), "session_id": str(r.session_id) if r.session_id else None,
                           "traffic_ratio": r.traffic_ratio, "sandboxed": _sandboxed(runtime)}
                          for r, runtime in active],
        "service_endpoint": endpoint.url,
        "is_public": endpoint.open_to_public,
        "runtime_variant": endpoint.runtime_variant,
        "status": status.value,
        "lifecycle": endpoint.lifecycle.value,
        "retries": endpoint.retries,
        "next_retry_at": endpoint.next_retry_at.isoformat() if endpoint.next_retry_at else None,
        "image": endpoint.image,
        "resource_slots": endpoint.resource_slots,
        "created_at": endpoint.created_at.isoformat() if endpoint.created_at else None,
        "routes": [_route_json(r, s, runtime) for r, s, runtime in own if _visible(r)],
        "revision": endpoint.revision,
        "max_surge": endpoint.max_surge,
        "rollout": rollout_state(endpoint, [r for r, _, _ in own]),
        "cors_allowed_origins": list(endpoint.cors_allowed_origins or []),
        "network_outbound": endpoint.network_outbound,
        "environ": dict(endpoint.environ or {}),
        "scaling_group": endpoint.scaling_group,
        "model_mount_destination": endpoint.model_mount_destination,
    }


@routes.get("/services")
async def list_services(request: web.Request) -> web.Response:
    """The compact list. Reads only the columns it shows (2,000 full ServeInfo objects took 1.4 s of the
    manager's event loop in bench/control_plane, stalling the control loop and every other request)."""
    caller = caller_of(request)
    name = request.query.get("name")
    async with request.app[CTX].db() as db:
        query = sa.select(Endpoint.id, Endpoint.name, Endpoint.replicas, Endpoint.url, Endpoint.open_to_public,
                          Endpoint.lifecycle).where(Endpoint.lifecycle != EndpointLifecycle.DESTROYED,
                                                    Endpoint.kind == "service")
        query = query.where(Endpoint.owner_id == caller.user_id if request.query.get("all") != "true"
                            else endpoint_visibility(caller))
        if name is not None:
            query = query.where(Endpoint.name == name)
        endpoints = (await db.execute(query.order_by(Endpoint.created_at))).all()
        routes_of: dict[uuid.UUID, list[tuple[RouteLifecycle, RouteHealth, RouteTraffic]]] = defaultdict(list)
        if endpoints:
            for endpoint_id, route_lifecycle, health, traffic in (await db.execute(
                    sa.select(Route.endpoint_id, Route.lifecycle, Route.health, Route.traffic).where(
                        Route.endpoint_id.in_([e.id for e in endpoints]),
                        Route.lifecycle != RouteLifecycle.TERMINATED))).all():
                routes_of[endpoint_id].append((route_lifecycle, health, traffic))
    out = []
    for endpoint_id, endpoint_name, replicas, url, is_public, lifecycle in endpoints:
        own = routes_of.get(endpoint_id, [])
        status = derive_endpoint_status(lifecycle, replicas, [(lc, health) for lc, health, _ in own])
        active = sum(1 for lc, _, traffic in own if route_active(lc, traffic))
        out.append(CompactServeInfo(
            id=endpoint_id, name=endpoint_name, replicas=replicas, desired_session_count=replicas,
            active_route_count=active, service_endpoint=url, is_public=is_public, status=status.value,
        ).model_dump(mode="json"))
    return json_response(out)


def check_replica_limit(ctx, count: int, field: str) -> None:
    """400 naming ``field`` when ``count`` exceeds the per-endpoint replica limit."""
    if count > ctx.config.limits.max_replicas:
        raise InvalidAPIParameters(f"{field}: at most {ctx.config.limits.max_replicas}")


async def resolve_create_request(ctx, db, caller: Caller, body: NewServiceRequest):
    """Checks shared by create and try: owner, folder, definition, resources. Returns (owner, folder, resolved)."""
    check_replica_limit(ctx, body.replicas, "replicas")
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
        ctx.config, folder, body.runtime_variant, body.config.model_definition_path, body.image,
        body.architecture, body.config.resources, body.config.resource_opts, body.config.environ,
        mount=body.config.model_mount_destination, service_name=body.name)
    return owner, folder, resolved


def new_endpoint(body: NewServiceRequest, owner: Caller, caller: Caller, folder_id: uuid.UUID,
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
        network_outbound=body.network_outbound, proxy_port=port, url=url, lifecycle=EndpointLifecycle.CREATED,
    )


@routes.post("/services")
async def create_service(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    caller = caller_of(request)
    body = await parse_body(request, NewServiceRequest)
    async with ctx.db() as db:
        owner, folder, resolved = await resolve_create_request(ctx, db, caller, body)
        await ensure_unique_name(db, owner.user_id, body.name)
        folder_id = folder.id

    def rows(port: int | None, subdomain: str | None, url: str) -> list[Any]:
        endpoint = new_endpoint(body, owner, caller, folder_id, resolved, name=body.name, kind="service",
                                port=port, url=url)
        endpoint.subdomain = subdomain
        return [endpoint, Event(endpoint_id=endpoint.id, kind="endpoint_created",
                                data={"replicas": body.replicas, "by": caller.access_key})]

    endpoint = await insert_endpoint(ctx.db, ctx.config, owner.user_id, body.name, rows)
    ctx.poke(endpoint.id)
    return json_response(serve_info(endpoint, []), status=201)


@routes.get("/services/{service_id}")
async def get_service(request: web.Request) -> web.Response:
    async with request.app[CTX].db() as db:
        endpoint = await load_endpoint(db, caller_of(request), request.match_info["service_id"])
        rows = await _routes_with_sessions(db, [endpoint.id])
    return json_response(serve_info(endpoint, rows))


@routes.delete("/services/{service_id}")
async def delete_service(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    async with ctx.db() as db:
        endpoint = await load_endpoint(db, caller_of(request), request.match_info["service_id"])
        if endpoint.lifecycle != EndpointLifecycle.CREATED:  # a second DELETE: it is already going away
            raise ObjectNotFound(f"service {endpoint.id} not found (it is being destroyed)")
        endpoint.lifecycle = EndpointLifecycle.DESTROYING
        endpoint.replicas = 0
        db.add(Event(endpoint_id=endpoint.id, kind="endpoint_destroy_requested", data={}))
        await db.commit()
    ctx.poke(endpoint.id)
    return json_response({"success": True})


@routes.post("/services/{service_id}/scale")
async def scale_service(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    body = await parse_body(request, ScaleRequest)
    check_replica_limit(ctx, body.to, "to")
    async with ctx.db() as db:
        endpoint = await load_endpoint(db, caller_of(request), request.match_info["service_id"])
        if endpoint.lifecycle != EndpointLifecycle.CREATED:
            raise InvalidAPIParameters("the service is being destroyed")
        current = (await db.execute(sa.select(sa.func.count()).select_from(Route).where(
            Route.endpoint_id == endpoint.id,
            Route.lifecycle.in_([RouteLifecycle.PROVISIONING, RouteLifecycle.RUNNING])))).scalar_one()
        endpoint.replicas = body.to
        db.add(Event(endpoint_id=endpoint.id, kind="endpoint_scaled", data={"to": body.to}))
        await db.commit()
    ctx.poke(endpoint.id)
    return json_response(ScaleResponse(current_route_count=current, target_count=body.to).model_dump())


@routes.get("/services/{service_id}/errors")
async def list_errors(request: web.Request) -> web.Response:
    async with request.app[CTX].db() as db:
        endpoint = await load_endpoint(db, caller_of(request), request.match_info["service_id"])
        failed = (await db.execute(sa.select(Route).where(
            Route.endpoint_id == endpoint.id, Route.lifecycle == RouteLifecycle.FAILED_TO_START)
            .order_by(Route.created_at))).scalars()
        errors = [{"session_id": str(r.session_id) if r.session_id else None, "error": r.error_data or {}}
                  for r in failed]
    return json_response({"errors": errors, "retries": endpoint.retries})


async def reread_definition(ctx, db, endpoint: Endpoint) -> bool:
    """Read the folder's model definition again (the user may have fixed the file that made the replicas fail):
    a changed definition is stored as a new revision; a still-invalid one is a 400 naming the problem."""
    folder = await db.get(ModelFolder, endpoint.model_folder_id) if endpoint.model_folder_id else None
    if folder is None:
        return False
    resolved = resolve_service(ctx.config, folder, endpoint.runtime_variant, endpoint.model_definition_path,
                               endpoint.image, endpoint.architecture, endpoint.resource_slots, endpoint.resource_opts,
                               endpoint.environ, mount=endpoint.model_mount_destination, service_name=endpoint.name)
    if resolved.definition == endpoint.model_definition:
        return False
    endpoint.model_definition = resolved.definition
    endpoint.revision += 1
    db.add(Event(endpoint_id=endpoint.id, kind="endpoint_updated", data={
        "revision": endpoint.revision, "changed": ["model_definition"], "by": "errors/clear"}))
    return True


@routes.post("/services/{service_id}/errors/clear")
async def clear_errors(request: web.Request) -> web.Response:
    """Forget failed starts and retry now, with the folder's model definition read again."""
    ctx = request.app[CTX]
    async with ctx.db() as db:
        endpoint = await load_endpoint(db, caller_of(request), request.match_info["service_id"])
        if endpoint.lifecycle == EndpointLifecycle.CREATED:
            await reread_definition(ctx, db, endpoint)
        await db.execute(sa.delete(Route).where(Route.endpoint_id == endpoint.id,
                                                Route.lifecycle == RouteLifecycle.FAILED_TO_START))
        endpoint.retries = 0
        endpoint.next_retry_at = None
        await db.commit()
    ctx.poke(endpoint.id)
    return web.Response(status=204)


__all__ = ["routes", "serve_info", "load_endpoint", "Agent", "UserRole"]
