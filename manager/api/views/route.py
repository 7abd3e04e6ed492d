"""A route on the wire: REST ``RouteInfo``/``ActiveRoute`` and GraphQL ``Routing`` (plus its error view)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from common.protocol import UNSANDBOXED_RUNTIME
from common.status import RouteHealth, RouteLifecycle, RouteTraffic
from manager.db.models import Route, Session


def sandboxed(runtime: str | None) -> bool:
    """False only for a replica on an agent that runs replicas without a sandbox (docs/security.md)."""
    return runtime != UNSANDBOXED_RUNTIME


def iso(value: datetime | None) -> str | None:
    """A timestamp as REST shows it (GraphQL's DateTime scalar writes the same text)."""
    return value.isoformat() if value else None


def route_status(route: Route) -> str:
    """Backend.AI's single route status from Moorage's orthogonal axes (lifecycle, health, traffic).

    A running route that has not passed a probe yet is still ``provisioning`` (as in Backend.AI, where a route
    becomes healthy on its first passed check); a healthy route that was taken out of traffic is ``unhealthy``
    (it serves nothing)."""
    lifecycle = route.lifecycle
    if lifecycle == RouteLifecycle.RUNNING:
        if route.health == RouteHealth.HEALTHY:
            return "healthy" if route.traffic == RouteTraffic.ACTIVE else "unhealthy"
        if route.health == RouteHealth.DEGRADED:
            return "degraded"
        if route.health == RouteHealth.UNHEALTHY:
            return "unhealthy"
        return "provisioning"
    return lifecycle.value  # provisioning | terminating | terminated | failed_to_start


def _shared(route: Route) -> dict[str, Any]:
    """The fields both APIs show under the same name and value."""
    return {"traffic_ratio": route.traffic_ratio, "error_data": route.error_data,
            "lifecycle": route.lifecycle.value, "health": route.health.value, "traffic": route.traffic.value}


def _id(value: uuid.UUID | None) -> str | None:
    return str(value) if value else None


def route_info(route: Route, session: Session | None, runtime: str | None) -> dict[str, Any]:
    """REST ``RouteInfo`` (``GET /services/{id}``'s ``routes``)."""
    shared = _shared(route)
    return {
        "route_id": str(route.id),
        "session_id": _id(route.session_id),
        "lifecycle": shared["lifecycle"],
        "status": shared["lifecycle"],  # REST's status is the lifecycle (GraphQL's is Backend.AI's, route_status)
        "health": shared["health"],
        "traffic": shared["traffic"],
        "traffic_ratio": shared["traffic_ratio"],
        "agent": session.agent_id if session else None,
        "host": session.host if session else None,
        "port": session.port if session else None,
        "error_data": shared["error_data"],
        "created_at": iso(route.created_at),
        "revision": route.revision,
        "sandboxed": sandboxed(runtime),
    }


def active_route(route: Route, runtime: str | None) -> dict[str, Any]:
    """REST ``ActiveRoute`` (Backend.AI's ``active_routes`` of ServeInfo)."""
    return {"route_id": str(route.id), "session_id": _id(route.session_id), "traffic_ratio": route.traffic_ratio,
            "sandboxed": sandboxed(runtime)}


def route_node(route: Route) -> dict[str, Any]:
    """GraphQL ``Routing`` (UUIDs and the datetime stay objects: the schema's scalars write them)."""
    shared = _shared(route)
    return {
        "routing_id": route.id, "endpoint": route.endpoint_id, "session": route.session_id,
        "status": route_status(route), "traffic_ratio": shared["traffic_ratio"], "created_at": route.created_at,
        "error_data": shared["error_data"], "live_stat": None, "lifecycle": shared["lifecycle"],
        "health": shared["health"], "traffic": shared["traffic"],
    }


def route_error(route: Route) -> dict[str, Any]:
    """REST ``GET /services/{id}/errors``: one failed route's session and raw error."""
    return {"session_id": _id(route.session_id), "error": route.error_data or {}}


def route_error_node(route: Route) -> dict[str, Any]:
    """GraphQL ``InferenceSessionError``: Backend.AI's ``errors`` list (src, name, repr) of a failed route."""
    data = route.error_data or {}
    errors = data.get("errors") if isinstance(data.get("errors"), list) else None
    if not errors:
        errors = [{"src": "", "name": str(data.get("type", "error")),
                   "repr": str(data.get("message") or data.get("stderr_tail") or "")}]
    return {"session_id": route.session_id,
            "errors": [{"src": str(e.get("src", "")), "name": str(e.get("name", "")), "repr": str(e.get("repr", ""))}
                       for e in errors if isinstance(e, dict)]}
