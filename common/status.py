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


class SessionStatus(StrEnum):
    """A session (one replica's kernel) as the manager records it: the agent's :class:`KernelStatus`, plus
    ``pending`` (placed, not started yet) and ``lost`` (its agent vanished)."""

    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    EXITED = "exited"
    FAILED = "failed"
    TERMINATED = "terminated"
    LOST = "lost"


ACTIVE_SESSION_STATES = (SessionStatus.PENDING, SessionStatus.STARTING, SessionStatus.RUNNING)  # holds slots
GIVEN_UP_SESSION_STATES = (SessionStatus.TERMINATED, SessionStatus.LOST, SessionStatus.FAILED)


class AgentStatus(StrEnum):
    ALIVE = "alive"
    LOST = "lost"


class UserRole(StrEnum):
    SUPERADMIN = "superadmin"
    ADMIN = "admin"
    USER = "user"


LIVE_ROUTE_LIFECYCLES = frozenset({RouteLifecycle.PROVISIONING, RouteLifecycle.RUNNING})


# What a route's three axes mean together: the one definition of each (SQL twins in manager/db/models.py).
def route_serving(lifecycle: RouteLifecycle, health: RouteHealth, traffic: RouteTraffic) -> bool:
    """The route gets traffic: running, passing its health checks and not drained (what the route table
    publishes to the app proxies)."""
    return lifecycle == RouteLifecycle.RUNNING and health == RouteHealth.HEALTHY and traffic == RouteTraffic.ACTIVE


def route_ready(lifecycle: RouteLifecycle, health: RouteHealth) -> bool:
    """The replica is up and passing its health checks, whatever its traffic (what counts as a healthy replica
    in rollouts and in an endpoint's status)."""
    return lifecycle == RouteLifecycle.RUNNING and health == RouteHealth.HEALTHY


def route_active(lifecycle: RouteLifecycle, traffic: RouteTraffic) -> bool:
    """The replica runs and is meant to get traffic, healthy or not (Backend.AI's ``active_routes``)."""
    return lifecycle == RouteLifecycle.RUNNING and traffic == RouteTraffic.ACTIVE
