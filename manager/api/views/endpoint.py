"""An endpoint on the wire: REST ``ServeInfo``, the compact list item, the search item, GraphQL ``Endpoint``.

:func:`endpoint_summary` derives the values every shape shows (status, active routes) once; each shape then
names them the way its API does. ``tests/manager/test_views.py`` checks that REST and GraphQL agree.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from common.status import (
    LIVE_ROUTE_LIFECYCLES,
    EndpointLifecycle,
    EndpointStatus,
    RouteLifecycle,
    route_active,
    route_ready,
)
from manager.api.schemas import CompactServeInfo, SearchItem, ServeInfo
from manager.api.views.route import active_route, iso, route_error_node, route_info, route_node
from manager.db.models import Endpoint, Route
from manager.endpoint_status import derive_endpoint_status
from manager.services.model import RouteAxes, RouteRow, SearchPage, ServiceSnapshot, ServiceSummary


@dataclasses.dataclass(frozen=True)
class Derived:
    """What every shape of an endpoint derives from its routes, computed in one place."""

    status: EndpointStatus
    active: list[int]  # indexes of the active routes (running and in traffic), in route order


def derive(lifecycle: EndpointLifecycle, replicas: int, routes: Sequence[RouteAxes]) -> Derived:
    """The endpoint's status and its active routes from the state axes of its unterminated routes."""
    status = derive_endpoint_status(lifecycle, replicas, [(lc, health) for lc, health, _ in routes])
    return Derived(status, [i for i, (lc, _, traffic) in enumerate(routes) if route_active(lc, traffic)])


def _axes(rows: Sequence[RouteRow]) -> list[RouteAxes]:
    return [(r.route.lifecycle, r.route.health, r.route.traffic) for r in rows]


def endpoint_summary(snapshot: ServiceSnapshot) -> Derived:
    endpoint = snapshot.endpoint
    return derive(endpoint.lifecycle, endpoint.replicas, _axes(snapshot.routes))


def rollout_state(endpoint: Endpoint, routes: Sequence[Route]) -> dict[str, Any] | None:
    """While live routes run another revision than the endpoint's: how far the rolling update is."""
    live = [r for r in routes if r.lifecycle in LIVE_ROUTE_LIFECYCLES]
    outdated = [r for r in live if r.revision != endpoint.revision]
    if not outdated:
        return None
    current = [r for r in live if r.revision == endpoint.revision]
    serving = [r for r in current if route_ready(r.lifecycle, r.health)]
    return {"revision": endpoint.revision, "current": len(current), "current_serving": len(serving),
            "outdated": len(outdated)}


def serve_info(snapshot: ServiceSnapshot) -> dict[str, Any]:
    """REST: Backend.AI's ServeInfo plus our extensions (status, lifecycle, retries, routes, rollout)."""
    endpoint, rows = snapshot.endpoint, snapshot.routes
    derived = endpoint_summary(snapshot)
    fields = {
        "endpoint_id": str(endpoint.id),
        "model_id": str(endpoint.model_folder_id) if endpoint.model_folder_id else None,
        "extra_mounts": list(endpoint.extra_mounts or {}),
        "name": endpoint.name,
        "replicas": endpoint.replicas,
        "desired_session_count": endpoint.replicas,
        "model_definition_path": endpoint.model_definition_path,
        "active_routes": [active_route(rows[i].route, rows[i].runtime) for i in derived.active],
        "service_endpoint": endpoint.url,
        "is_public": endpoint.open_to_public,
        "runtime_variant": endpoint.runtime_variant,
        "status": derived.status.value,
        "lifecycle": endpoint.lifecycle.value,
        "retries": endpoint.retries,
        "next_retry_at": iso(endpoint.next_retry_at),
        "image": endpoint.image,
        "resource_slots": endpoint.resource_slots,
        "created_at": iso(endpoint.created_at),
        "routes": [route_info(r.route, r.session, r.runtime) for r in rows],
        "revision": endpoint.revision,
        "max_surge": endpoint.max_surge,
        "rollout": rollout_state(endpoint, [r.route for r in rows]),
        "cors_allowed_origins": list(endpoint.cors_allowed_origins or []),
        "network_outbound": endpoint.network_outbound,
        "route_capacity": endpoint.route_capacity,
        "model_aliases": list(endpoint.model_aliases or []),
        "engine_model_name": endpoint.engine_model_name,
        # extensions the console's Edit form pre-fills from
        "environ": dict(endpoint.environ or {}),
        "scaling_group": endpoint.scaling_group,
        "model_mount_destination": endpoint.model_mount_destination,
    }
    return ServeInfo.model_validate(fields).model_dump(mode="json")


def compact_serve_info(summary: ServiceSummary) -> dict[str, Any]:
    """REST: an item of ``GET /services``."""
    derived = derive(summary.lifecycle, summary.replicas, summary.routes)
    return CompactServeInfo(
        id=summary.id, name=summary.name, replicas=summary.replicas, desired_session_count=summary.replicas,
        active_route_count=len(derived.active), service_endpoint=summary.url, is_public=summary.is_public,
        status=derived.status.value,
    ).model_dump(mode="json")


def search_item(endpoint: Endpoint, page: SearchPage) -> SearchItem:
    """REST: an item of ``POST /services/_/search`` (with the console's extensions: status, owner, created_at)."""
    status = derive_endpoint_status(endpoint.lifecycle, endpoint.replicas, page.route_states.get(endpoint.id, []))
    return SearchItem(id=endpoint.id, name=endpoint.name, replicas=endpoint.replicas,
                      desired_session_count=endpoint.replicas,
                      active_route_count=page.active_counts.get(endpoint.id, 0),
                      service_endpoint=endpoint.url, resource_slots=endpoint.resource_slots,
                      resource_group=endpoint.scaling_group, open_to_public=endpoint.open_to_public,
                      status=status.value, owner=page.owner_emails.get(endpoint.owner_id),
                      created_at=endpoint.created_at.isoformat() if endpoint.created_at else None)


def _image_node(endpoint: Endpoint) -> dict[str, Any] | None:
    if not endpoint.image:
        return None
    name = endpoint.image
    registry, _, rest = name.rpartition("/") if "/" in name else ("", "", name)
    tag = rest.split(":", 1)[1] if ":" in rest else None
    return {"name": name, "humanized_name": name, "tag": tag, "registry": registry.split("/", 1)[0] or None,
            "architecture": endpoint.architecture}


def endpoint_node(snapshot: ServiceSnapshot, emails: Mapping[uuid.UUID, str]) -> dict[str, Any]:
    """GraphQL ``Endpoint`` (UUIDs and datetimes stay objects: the schema's scalars write them). ``emails``: the
    owner's and creator's, by user id."""
    e, own = snapshot.endpoint, [r.route for r in snapshot.routes]
    derived = endpoint_summary(snapshot)
    return {
        "id": str(e.id), "endpoint_id": e.id, "name": e.name, "image": e.image, "image_object": _image_node(e),
        "domain": e.domain_name, "project": e.project_name, "resource_group": e.scaling_group,
        "resource_slots": e.resource_slots or {}, "resource_opts": e.resource_opts or {}, "url": e.url,
        "model": e.model_folder_id, "model_definition_path": e.model_definition_path,
        "model_mount_destination": e.model_mount_destination, "created_user": e.created_user_id,
        "created_user_email": emails.get(e.created_user_id), "session_owner": e.owner_id,
        "session_owner_email": emails.get(e.owner_id), "tag": e.tag, "startup_command": e.startup_command,
        "bootstrap_script": e.bootstrap_script, "callback_url": e.callback_url, "environ": e.environ or {},
        "replicas": e.replicas, "desired_session_count": e.replicas,
        "cluster_mode": e.cluster_mode.upper().replace("-", "_"), "cluster_size": e.cluster_size,
        "open_to_public": e.open_to_public, "runtime_variant": e.runtime_variant, "created_at": e.created_at,
        "destroyed_at": e.destroyed_at, "routings": [route_node(r) for r in own], "retries": e.retries,
        "next_retry_at": e.next_retry_at, "status": derived.status.value, "lifecycle_stage": e.lifecycle.value,
        "errors": [route_error_node(r) for r in own if r.lifecycle == RouteLifecycle.FAILED_TO_START],
        "live_stat": None,
    }
