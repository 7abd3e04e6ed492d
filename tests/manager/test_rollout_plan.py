"""The rolling-update half of the replica planner (pure): capacity never drops, surge is bounded, it converges."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from common.status import RouteHealth, RouteLifecycle
from manager.control.planner import RouteView, plan_replicas

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _route(revision: int, age: int = 0, lc: RouteLifecycle = RouteLifecycle.RUNNING,
           health: RouteHealth = RouteHealth.HEALTHY) -> RouteView:
    return RouteView(uuid.uuid4(), lc, health, T0 + timedelta(seconds=age), revision)


def test_rollout_starts_at_most_surge_new_routes_and_keeps_the_old_ones_serving() -> None:
    old = [_route(1, age=i) for i in range(3)]
    plan = plan_replicas(3, old, can_start=True, revision=2, max_surge=1)
    assert plan.create == 1 and plan.drain == () and plan.rolling
    plan = plan_replicas(3, old, can_start=True, revision=2, max_surge=2)
    assert plan.create == 2 and plan.drain == ()


def test_an_old_route_retires_only_once_a_new_one_serves() -> None:
    old = [_route(1, age=i) for i in range(3)]
    starting = _route(2, age=10, lc=RouteLifecycle.PROVISIONING, health=RouteHealth.NOT_CHECKED)
    plan = plan_replicas(3, [*old, starting], can_start=True, revision=2, max_surge=1)
    assert plan == plan_replicas(3, [*old, starting], can_start=True, revision=2, max_surge=1)
    assert plan.create == 0 and plan.drain == ()
    healthy = dataclasses.replace(starting, lifecycle=RouteLifecycle.RUNNING, health=RouteHealth.HEALTHY)
    plan = plan_replicas(3, [*old, healthy], can_start=True, revision=2, max_surge=1)
    assert plan.drain == (old[0].id,)  # the oldest old route goes first
    assert plan.create == 1  # and its slot is refilled with a new route at once


def test_a_new_revision_that_never_gets_healthy_leaves_the_old_one_serving() -> None:
    old = [_route(1, age=i) for i in range(2)]
    sick = _route(2, age=10, health=RouteHealth.UNHEALTHY)
    plan = plan_replicas(2, [*old, sick], can_start=True, revision=2, max_surge=1)
    assert plan.drain == () and plan.create == 0
    blocked = plan_replicas(2, old, can_start=False, revision=2, max_surge=1)  # failed starts back off
    assert blocked.backoff_blocked and blocked.drain == ()


def test_old_routes_that_serve_nothing_are_retired_at_once() -> None:
    old_sick = _route(1, health=RouteHealth.UNHEALTHY)
    old_starting = _route(1, lc=RouteLifecycle.PROVISIONING, health=RouteHealth.NOT_CHECKED)
    plan = plan_replicas(2, [old_sick, old_starting], can_start=True, revision=2, max_surge=1)
    assert set(plan.drain) == {old_sick.id, old_starting.id}
    assert plan.create == 2


def test_scaling_to_zero_mid_rollout_drains_everything() -> None:
    routes = [_route(1), _route(2, age=5)]
    plan = plan_replicas(0, routes, can_start=True, revision=2, max_surge=1)
    assert set(plan.drain) == {r.id for r in routes} and plan.create == 0


@settings(max_examples=200, deadline=None)
@given(desired=st.integers(1, 6), start=st.integers(0, 8), surge=st.integers(1, 3),
       order=st.randoms(use_true_random=False))
def test_simulated_rollout_never_drops_capacity_and_converges(desired: int, start: int, surge: int, order) -> None:
    """Step the planner like the control loop does; new routes become healthy in a random order."""
    routes = [_route(1, age=i) for i in range(start)]
    clock = 100
    for _step in range(200):
        serving_before = sum(r.serving for r in routes)
        plan = plan_replicas(desired, routes, can_start=True, revision=2, max_surge=surge)
        routes = [r for r in routes if r.id not in plan.drain]
        if start >= desired:  # a rollout must not remove capacity that existed
            assert sum(r.serving for r in routes) >= min(desired, serving_before)
        for _ in range(plan.create):
            clock += 1
            routes.append(_route(2, age=clock, lc=RouteLifecycle.PROVISIONING, health=RouteHealth.NOT_CHECKED))
        assert len(routes) <= max(start, desired) + surge
        pending = [r for r in routes if not r.serving]
        if pending:  # one starting route becomes healthy per step
            pick = order.choice(pending)
            routes = [dataclasses.replace(r, lifecycle=RouteLifecycle.RUNNING, health=RouteHealth.HEALTHY)
                      if r.id == pick.id else r for r in routes]
        if all(r.revision == 2 and r.serving for r in routes) and len(routes) == desired:
            break
    else:
        raise AssertionError(f"rollout did not converge: {routes}")
