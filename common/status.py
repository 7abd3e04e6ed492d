"""Status enums (docs/architecture.md, State axes). Routes use orthogonal axes instead of one overloaded status."""

from __future__ import annotations

import enum

StrEnum = enum.StrEnum


class EndpointLifecycle(StrEnum):
    CREATED = "created"
    DESTROYING = "destroying"
    DESTROYED = "destroyed"


class EndpointStatus(StrEnum):
    """Derived status shown to users (not stored)."""

    PROVISIONING = "PROVISIONING"
    READY = "READY"
    HEALTHY = "HEALTHY"
    DEGRADED = "DEGRADED"
    UNHEALTHY = "UNHEALTHY"
    DESTROYING = "DESTROYING"
    DESTROYED = "DESTROYED"


class RouteLifecycle(StrEnum):
    PROVISIONING = "provisioning"
    RUNNING = "running"
    TERMINATING = "terminating"
    TERMINATED = "terminated"
    FAILED_TO_START = "failed_to_start"


class RouteHealth(StrEnum):
    NOT_CHECKED = "not_checked"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    DEGRADED = "degraded"


class RouteTraffic(StrEnum):
    ACTIVE = "active"
    INACTIVE = "inactive"


class KernelStatus(StrEnum):
    """State of one replica process/container as its agent reports it."""

    STARTING = "starting"  # pre-start actions or start command running, not yet healthy
    RUNNING = "running"  # the process is up; see health for readiness
    EXITED = "exited"  # the process ended after it had been healthy at least once
    FAILED = "failed"  # it never became healthy (pre-start failure, exit during start, never passed a probe)
    TERMINATED = "terminated"  # stopped on request


class AgentStatus(StrEnum):
    ALIVE = "alive"
    LOST = "lost"


class UserRole(StrEnum):
    SUPERADMIN = "superadmin"
    ADMIN = "admin"
    USER = "user"


LIVE_ROUTE_LIFECYCLES = frozenset({RouteLifecycle.PROVISIONING, RouteLifecycle.RUNNING})
