"""Replica planning: desired replicas vs live routes → routes to create and routes to drain. Pure."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from datetime import datetime

from common.status import LIVE_ROUTE_LIFECYCLES, RouteHealth, RouteLifecycle


@dataclasses.dataclass(frozen=True, slots=True)
class RouteView:
    id: uuid.UUID
    lifecycle: RouteLifecycle
    health: RouteHealth
    created_at: datetime


@dataclasses.dataclass(frozen=True, slots=True)
class ReplicaPlan:
    create: int = 0
    drain: tuple[uuid.UUID, ...] = ()
    backoff_blocked: bool = False  # replicas are missing but the endpoint is backing off after failed starts


def plan_replicas(desired: int, routes: Sequence[RouteView], can_start: bool) -> ReplicaPlan:
    """Scale-down drains unhealthy routes first, then the newest; scale-up only when not backing off."""
    live = [r for r in routes if r.lifecycle in LIVE_ROUTE_LIFECYCLES]
    if len(live) > desired:
        ordered = sorted(live, key=lambda r: (r.health != RouteHealth.UNHEALTHY, -r.created_at.timestamp()))
        return ReplicaPlan(drain=tuple(r.id for r in ordered[: len(live) - desired]))
    missing = desired - len(live)
    if missing > 0:
        if not can_start:
            return ReplicaPlan(backoff_blocked=True)
        return ReplicaPlan(create=missing)
    return ReplicaPlan()


def backoff_delay(retries: int, base: float, cap: float) -> float:
    """Seconds to wait after the ``retries``-th consecutive failed start: base·2^(n-1), capped."""
    if retries <= 0:
        return 0.0
    return min(cap, base * (2 ** min(retries - 1, 30)))
