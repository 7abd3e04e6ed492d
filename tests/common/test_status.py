"""The one definition of what a route's axes mean together, and the session states."""

from __future__ import annotations

import itertools

from common.status import (
    ACTIVE_SESSION_STATES,
    GIVEN_UP_SESSION_STATES,
    KernelStatus,
    RouteHealth,
    RouteLifecycle,
    RouteTraffic,
    SessionStatus,
    route_active,
    route_ready,
    route_serving,
)


def test_serving_ready_and_active_over_every_combination() -> None:
    for lifecycle, health, traffic in itertools.product(RouteLifecycle, RouteHealth, RouteTraffic):
        running = lifecycle == RouteLifecycle.RUNNING
        healthy = health == RouteHealth.HEALTHY
        active = traffic == RouteTraffic.ACTIVE
        assert route_serving(lifecycle, health, traffic) is (running and healthy and active)
        assert route_ready(lifecycle, health) is (running and healthy)
        assert route_active(lifecycle, traffic) is (running and active)
        # serving is the strictest: it implies the other two
        if route_serving(lifecycle, health, traffic):
            assert route_ready(lifecycle, health) and route_active(lifecycle, traffic)


def test_session_states_cover_what_agents_report_and_stay_wire_compatible() -> None:
    assert {k.value for k in KernelStatus} <= {s.value for s in SessionStatus}
    assert SessionStatus.RUNNING == "running" and SessionStatus.LOST == "lost"  # stored and shown as these strings
    assert not set(ACTIVE_SESSION_STATES) & set(GIVEN_UP_SESSION_STATES)
