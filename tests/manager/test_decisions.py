"""Pure decision functions of the manager: replica planning, placement, route transitions, status, back-off."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from common.protocol import KernelError, KernelReport
from common.slots import ResourceSlots
from common.status import (
    EndpointLifecycle,
    EndpointStatus,
    KernelStatus,
    RouteHealth,
    RouteLifecycle,
    RouteTraffic,
)
from manager.control.planner import RouteView, backoff_delay, plan_replicas
from manager.control.scheduler import AgentCapacity, select_agent
from manager.control.transitions import decide_route_change
from manager.endpoint_status import derive_endpoint_status

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _route(lc=RouteLifecycle.RUNNING, health=RouteHealth.HEALTHY, age=0) -> RouteView:
    return RouteView(uuid.uuid4(), lc, health, T0 + timedelta(seconds=age))


def test_plan_creates_missing_replicas() -> None:
    assert plan_replicas(3, [_route()], can_start=True).create == 2
    blocked = plan_replicas(3, [_route()], can_start=False)
    assert blocked.create == 0 and blocked.backoff_blocked


def test_plan_ignores_dead_routes() -> None:
    routes = [_route(RouteLifecycle.FAILED_TO_START), _route(RouteLifecycle.TERMINATED),
              _route(RouteLifecycle.TERMINATING)]
    assert plan_replicas(1, routes, can_start=True).create == 1


def test_plan_drains_unhealthy_first_then_newest() -> None:
    old, new, sick = _route(age=0), _route(age=10), _route(health=RouteHealth.UNHEALTHY, age=5)
    assert plan_replicas(2, [old, new, sick], True).drain == (sick.id,)
    assert plan_replicas(1, [old, new, sick], True).drain == (sick.id, new.id)
    assert plan_replicas(0, [old], True).drain == (old.id,)
    assert plan_replicas(1, [old], True) == plan_replicas(1, [old], False)


def test_backoff_is_exponential_and_capped() -> None:
    assert [backoff_delay(n, 2, 60) for n in range(7)] == [0, 2, 4, 8, 16, 32, 60]
    assert backoff_delay(1000, 2, 60) == 60


def _agent(agent_id: str, cpu: str, used: str = "0", group: str = "default", replicas: int = 0) -> AgentCapacity:
    return AgentCapacity(agent_id, group, "x86_64", ResourceSlots.parse({"cpu": cpu, "mem": "8g"}),
                         ResourceSlots.parse({"cpu": used}), replicas)


def test_select_agent_spreads_replicas_and_never_overcommits() -> None:
    req = ResourceSlots.parse({"cpu": 1, "mem": "1g"})
    assert select_agent(req, [_agent("a", "4", replicas=1), _agent("b", "4")], "default").agent_id == "b"
    assert select_agent(req, [_agent("a", "4", used="3.5"), _agent("b", "2", used="0.5")],
                        "default").agent_id == "b"
    none = select_agent(req, [_agent("a", "4", used="3.5")], "default")
    assert none.agent_id is None and "1 cpu" in none.reason
    assert "scaling group" in select_agent(req, [_agent("a", "4", group="gpu")], "default").reason
    big = select_agent(ResourceSlots.parse({"cuda.device": 2}), [_agent("a", "4")], "default")
    assert big.agent_id is None and "2 cuda.device" in big.reason


def _report(status: KernelStatus, health: RouteHealth = RouteHealth.NOT_CHECKED,
            error: KernelError | None = None) -> KernelReport:
    return KernelReport(kernel_id=uuid.uuid4(), endpoint_id=uuid.uuid4(), route_id=uuid.uuid4(), status=status,
                        health=health, host="127.0.0.1", port=30000, error=error)


def test_route_transitions() -> None:
    sid = uuid.uuid4()
    P, R = RouteLifecycle.PROVISIONING, RouteLifecycle.RUNNING
    nc, ok = RouteHealth.NOT_CHECKED, RouteHealth.HEALTHY
    active = RouteTraffic.ACTIVE
    assert decide_route_change(P, nc, active, _report(KernelStatus.STARTING), sid) is None
    up = decide_route_change(P, nc, active, _report(KernelStatus.RUNNING, ok), sid)
    assert up and up.lifecycle == R and up.health == ok and up.became_healthy
    failed = decide_route_change(P, nc, active, _report(KernelStatus.FAILED, error=KernelError(
        type="start_failed", message="exited with 3", exit_code=3, stderr_tail="boom")), sid)
    assert failed and failed.lifecycle == RouteLifecycle.FAILED_TO_START and failed.failed_start
    assert failed.error_data and failed.error_data["stderr_tail"] == "boom" and failed.error_data["exit_code"] == 3
    assert failed.error_data["type"] == "creation_failed"
    died = decide_route_change(R, ok, active, _report(KernelStatus.EXITED), sid)
    assert died and died.lifecycle == RouteLifecycle.TERMINATED and died.traffic == RouteTraffic.INACTIVE
    sick = decide_route_change(R, ok, active, _report(KernelStatus.RUNNING, RouteHealth.UNHEALTHY), sid)
    assert sick and sick.health == RouteHealth.UNHEALTHY and not sick.became_healthy
    draining = decide_route_change(RouteLifecycle.TERMINATING, ok, RouteTraffic.INACTIVE,
                                   _report(KernelStatus.RUNNING, ok), sid)
    assert draining is None
    done = decide_route_change(RouteLifecycle.TERMINATING, ok, RouteTraffic.INACTIVE,
                               _report(KernelStatus.TERMINATED), sid)
    assert done and done.lifecycle == RouteLifecycle.TERMINATED
    assert decide_route_change(RouteLifecycle.FAILED_TO_START, nc, active, _report(KernelStatus.RUNNING), sid) is None


def test_endpoint_status() -> None:
    C = EndpointLifecycle.CREATED
    R, P = RouteLifecycle.RUNNING, RouteLifecycle.PROVISIONING
    H, U, N = RouteHealth.HEALTHY, RouteHealth.UNHEALTHY, RouteHealth.NOT_CHECKED
    assert derive_endpoint_status(C, 2, [(R, H), (R, H)]) == EndpointStatus.HEALTHY
    assert derive_endpoint_status(C, 2, [(R, H), (P, N)]) == EndpointStatus.DEGRADED
    assert derive_endpoint_status(C, 1, [(P, N)]) == EndpointStatus.PROVISIONING
    assert derive_endpoint_status(C, 1, [(R, U)]) == EndpointStatus.UNHEALTHY
    assert derive_endpoint_status(C, 1, [(RouteLifecycle.FAILED_TO_START, U)]) == EndpointStatus.UNHEALTHY
    assert derive_endpoint_status(C, 0, []) == EndpointStatus.READY
    assert derive_endpoint_status(EndpointLifecycle.DESTROYING, 0, []) == EndpointStatus.DESTROYING
