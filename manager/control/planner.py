"""Replica planning: desired replicas vs live routes → routes to create and routes to drain. Pure."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from datetime import datetime

from common.status import LIVE_ROUTE_LIFECYCLES, RouteHealth, RouteLifecycle, route_ready


@dataclasses.dataclass(frozen=True, slots=True)
class RouteView:
    id: uuid.UUID
    lifecycle: RouteLifecycle
    health: RouteHealth
    created_at: datetime
    revision: int = 1

    @property
    def serving(self) -> bool:
        """Up and healthy (common.status.route_ready): what a rollout counts as a replica of its revision."""
        return route_ready(self.lifecycle, self.health)


@dataclasses.dataclass(frozen=True, slots=True)
class ReplicaPlan:
    create: int = 0
    drain: tuple[uuid.UUID, ...] = ()
    backoff_blocked: bool = False  # replicas are missing but the endpoint is backing off after failed starts
    rolling: bool = False  # routes of an older revision are still live


def _drain_order(route: RouteView) -> tuple[bool, float]:
    """Unhealthy first, then the newest (it has served least and holds the fewest long requests)."""
    return (route.health != RouteHealth.UNHEALTHY, -route.created_at.timestamp())


def plan_replicas(desired: int, routes: Sequence[RouteView], can_start: bool, revision: int = 1,
                  max_surge: int = 1) -> ReplicaPlan:
    """Routes to start (of ``revision``) and routes to drain so that ``desired`` current routes serve.

    Steady state: scale-down drains unhealthy routes first, then the newest; scale-up only when not backing off.
    Rolling update (live routes of another revision exist): start current routes while at most
    ``desired + max_surge`` routes are live, and retire an old route only when the serving routes without it
    still number ``desired`` — so capacity never drops below what was asked for and a new revision that never
    becomes healthy leaves the old one serving. Old routes that serve nothing are retired at once.
    """
    live = [r for r in routes if r.lifecycle in LIVE_ROUTE_LIFECYCLES]
    current = [r for r in live if r.revision == revision]
    old = [r for r in live if r.revision != revision]
    drain: list[uuid.UUID] = []
    if len(current) > desired:
        drain += [r.id for r in sorted(current, key=_drain_order)[: len(current) - desired]]
        current = sorted(current, key=_drain_order)[len(current) - desired:]
    serving_current = sum(r.serving for r in current)
    old_serving = sorted((r for r in old if r.serving), key=lambda r: r.created_at)
    drain += [r.id for r in old if not r.serving]
    surplus = max(0, len(old_serving) + serving_current - desired)
    drain += [r.id for r in old_serving[:surplus]]
    live_after = len(live) - len(drain)
    missing = desired - len(current)
    create = max(0, min(missing, desired + max(1, max_surge) - live_after)) if old else max(0, missing)
    if create and not can_start:
        return ReplicaPlan(drain=tuple(drain), backoff_blocked=True, rolling=bool(old))
    return ReplicaPlan(create=create, drain=tuple(drain), rolling=bool(old))


def backoff_delay(retries: int, base: float, cap: float) -> float:
    """Seconds to wait after the ``retries``-th consecutive failed start: base·2^(n-1), capped."""
    if retries <= 0:
        return 0.0
    return min(cap, base * (2.0 ** min(retries - 1, 30)))
