"""The user-facing endpoint status, derived from lifecycle and routes (never stored)."""

from __future__ import annotations

from common.status import (
    LIVE_ROUTE_LIFECYCLES,
    EndpointLifecycle,
    EndpointStatus,
    RouteHealth,
    RouteLifecycle,
    route_ready,
)


def derive_endpoint_status(lifecycle: EndpointLifecycle, replicas: int,
                           routes: list[tuple[RouteLifecycle, RouteHealth]]) -> EndpointStatus:
    if lifecycle == EndpointLifecycle.DESTROYED:
        return EndpointStatus.DESTROYED
    if lifecycle == EndpointLifecycle.DESTROYING:
        return EndpointStatus.DESTROYING
    live = [(lc, h) for lc, h in routes if lc in LIVE_ROUTE_LIFECYCLES]
    if replicas == 0 and not live:
        return EndpointStatus.READY
    healthy = sum(1 for lc, h in live if route_ready(lc, h))
    if healthy >= replicas and healthy > 0:
        return EndpointStatus.HEALTHY
    if healthy > 0:
        return EndpointStatus.DEGRADED
    if any(h == RouteHealth.UNHEALTHY for _, h in live) or (
            not live and any(lc == RouteLifecycle.FAILED_TO_START for lc, _ in routes)):
        return EndpointStatus.UNHEALTHY
    return EndpointStatus.PROVISIONING
