"""How an agent's kernel report moves a route. Pure; the heartbeat handler applies the result."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

from common.protocol import KernelReport
from common.status import KernelStatus, RouteHealth, RouteLifecycle, RouteTraffic

TERMINAL_KERNEL = frozenset({KernelStatus.EXITED, KernelStatus.FAILED, KernelStatus.TERMINATED})


@dataclasses.dataclass(frozen=True, slots=True)
class RouteChange:
    lifecycle: RouteLifecycle
    health: RouteHealth
    traffic: RouteTraffic
    error_data: dict[str, Any] | None = None
    failed_start: bool = False  # counts towards the endpoint's back-off
    became_healthy: bool = False  # resets the endpoint's back-off


def error_data_for(report: KernelReport, session_id: uuid.UUID) -> dict[str, Any]:
    """Backend.AI's error_data shape plus the fields users need to debug: message, exit code, stderr tail."""
    err = report.error
    message = err.message if err else f"replica {report.status.value}"
    return {
        "type": "creation_failed" if report.status == KernelStatus.FAILED else "replica_exited",
        "errors": [{"src": "agent", "name": err.type if err else report.status.value, "repr": message}],
        "session_id": str(session_id),
        "message": message,
        "exit_code": err.exit_code if err else None,
        "stderr_tail": err.stderr_tail if err else "",
    }


def decide_route_change(lifecycle: RouteLifecycle, health: RouteHealth, traffic: RouteTraffic,
                        report: KernelReport, session_id: uuid.UUID) -> RouteChange | None:
    if lifecycle in (RouteLifecycle.TERMINATED, RouteLifecycle.FAILED_TO_START):
        return None
    if lifecycle == RouteLifecycle.TERMINATING:
        if report.status in TERMINAL_KERNEL:
            return RouteChange(RouteLifecycle.TERMINATED, health, RouteTraffic.INACTIVE)
        return None
    if report.status == KernelStatus.FAILED:
        return RouteChange(RouteLifecycle.FAILED_TO_START, RouteHealth.UNHEALTHY, RouteTraffic.INACTIVE,
                           error_data_for(report, session_id), failed_start=True)
    if report.status in (KernelStatus.EXITED, KernelStatus.TERMINATED):
        return RouteChange(RouteLifecycle.TERMINATED, RouteHealth.UNHEALTHY, RouteTraffic.INACTIVE,
                           error_data_for(report, session_id))
    new_lifecycle = RouteLifecycle.RUNNING if report.status == KernelStatus.RUNNING else lifecycle
    new_health = report.health
    if (new_lifecycle, new_health) == (lifecycle, health):
        return None
    return RouteChange(new_lifecycle, new_health, traffic,
                       became_healthy=new_health == RouteHealth.HEALTHY and health != RouteHealth.HEALTHY)
