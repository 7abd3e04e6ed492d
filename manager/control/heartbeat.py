"""Applies agent heartbeats: upserts the agent, moves routes by kernel reports, finds orphans and vanished kernels.

Heartbeats are level-triggered (full kernel list each time), so applying the same one twice changes nothing.
Each kernel's utilisation sample (``KernelReport.stats``) is kept in ``sessions.stats`` with ``reported_at`` (the
manager's clock) for ``kernel`` autoscaling rules.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from common.protocol import AgentHeartbeat, HeartbeatReply
from common.status import AgentStatus, KernelStatus, RouteHealth, RouteLifecycle, RouteTraffic
from manager.control.planner import backoff_delay
from manager.control.transitions import TERMINAL_KERNEL, decide_route_change
from manager.db.models import Agent, Endpoint, Event, Route, Session

log = logging.getLogger(__name__)
ACTIVE_SESSION_STATES = ("pending", "starting", "running")


async def apply_heartbeat(ctx, hb: AgentHeartbeat) -> tuple[HeartbeatReply, set[uuid.UUID]]:  # type: ignore[no-untyped-def]
    """Returns the reply for the agent and the endpoints whose route tables changed."""
    now = datetime.now(UTC)
    rc = ctx.config.reconcile
    changed: set[uuid.UUID] = set()
    destroy: list[uuid.UUID] = []
    async with ctx.db() as db:
        agent = await db.get(Agent, hb.agent_id)
        if agent is None:
            agent = Agent(id=hb.agent_id, first_contact=now)
            db.add(agent)
            log.info("agent %s registered (%s)", hb.agent_id, hb.rpc_url)
        elif agent.status == AgentStatus.LOST:
            log.info("agent %s is back", hb.agent_id)
        agent.rpc_url = hb.rpc_url
        agent.replica_host = hb.replica_host
        agent.scaling_group = hb.scaling_group
        agent.architecture = hb.architecture
        agent.runtime = hb.runtime
        agent.available_slots = hb.available_slots
        agent.devices = list(hb.devices) or None
        agent.version = hb.version
        agent.status = AgentStatus.ALIVE
        agent.last_heartbeat = now

        reported = {k.kernel_id: k for k in hb.kernels}
        sessions = {s.id: s for s in (await db.execute(sa.select(Session).where(
            sa.or_(Session.id.in_(list(reported)),
                   sa.and_(Session.agent_id == hb.agent_id, Session.status.in_(ACTIVE_SESSION_STATES))))
        )).scalars()}
        routes = {r.id: r for r in (await db.execute(sa.select(Route).where(
            Route.id.in_([s.route_id for s in sessions.values()])))).scalars()}
        endpoints = {e.id: e for e in (await db.execute(sa.select(Endpoint).where(
            Endpoint.id.in_([r.endpoint_id for r in routes.values()])))).scalars()}

        for kernel_id, report in reported.items():
            session = sessions.get(kernel_id)
            route = routes.get(session.route_id) if session else None
            if session is None or route is None or session.status in ("terminated", "lost", "failed"):
                if report.status not in TERMINAL_KERNEL:
                    destroy.append(kernel_id)  # an orphan: unknown, or we already gave up on it
                continue
            new_status = report.status.value
            if session.status != new_status:
                session.status_history = [*(session.status_history or []),
                                          {"status": new_status, "at": now.isoformat()}][-20:]
                session.status = new_status
            session.host, session.port, session.runtime_handle = report.host, report.port, report.handle
            if report.allocation and session.allocation != report.allocation:
                session.allocation = report.allocation  # which GPUs (and how much of each) the kernel holds
            if report.stats is not None and _stats_due(session.stats, now, ctx.config.autoscale.evaluation_interval):
                # input of `kernel` autoscaling rules, stamped with the manager's clock; written at most once per
                # evaluation interval, not on every beat (one UPDATE per kernel per beat otherwise)
                session.stats = {**report.stats, "reported_at": now.timestamp()}
            if report.status in TERMINAL_KERNEL and session.terminated_at is None:
                session.terminated_at = now
            change = decide_route_change(route.lifecycle, route.health, route.traffic, report, session.id)
            if change is None:
                continue
            route.lifecycle, route.health, route.traffic = change.lifecycle, change.health, change.traffic
            if change.error_data is not None:
                route.error_data = change.error_data
                db.add(Event(endpoint_id=route.endpoint_id, route_id=route.id, kind="route_" + change.lifecycle.value,
                             data=change.error_data))
            endpoint = endpoints.get(route.endpoint_id)
            if endpoint is not None and change.failed_start:
                endpoint.retries += 1
                endpoint.next_retry_at = now + timedelta(
                    seconds=backoff_delay(endpoint.retries, rc.backoff_base, rc.backoff_max))
            if endpoint is not None and change.became_healthy and endpoint.retries:
                endpoint.retries = 0
                endpoint.next_retry_at = None
            changed.add(route.endpoint_id)

        # Kernels we started on this agent that it no longer lists: gone (e.g. the host rebooted).
        # The grace counts from the agent's answer to the start call (session.port set), not from placement: a
        # burst of placements can keep start calls queued for a while. A call that never got answered is given
        # rpc_timeout on top (the loop's own failure path normally ends it first).
        grace = timedelta(seconds=rc.kernel_report_grace)
        unanswered_grace = grace + timedelta(seconds=rc.rpc_timeout)
        for session in sessions.values():
            if (session.agent_id == hb.agent_id and session.id not in reported
                    and session.status in ACTIVE_SESSION_STATES and session.created_at
                    and _aware(session.created_at) < now - (grace if session.port is not None else unanswered_grace)):
                session.status = "lost"
                session.terminated_at = now
                route = routes.get(session.route_id)
                if route is not None and route.lifecycle in (RouteLifecycle.PROVISIONING, RouteLifecycle.RUNNING,
                                                             RouteLifecycle.TERMINATING):
                    route.lifecycle = RouteLifecycle.TERMINATED
                    route.health = RouteHealth.UNHEALTHY
                    route.traffic = RouteTraffic.INACTIVE
                    route.error_data = {"type": "replica_vanished", "message":
                                        f"agent {hb.agent_id} no longer reports kernel {session.id}",
                                        "session_id": str(session.id)}
                    changed.add(route.endpoint_id)
        await db.commit()
    return HeartbeatReply(destroy=destroy), changed


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


__all__ = ["KernelStatus", "apply_heartbeat"]


def _stats_due(stored: dict | None, now: datetime, interval: float) -> bool:  # type: ignore[type-arg]
    """Whether a kernel's stored utilisation is older than ``interval`` (or missing) and should be rewritten."""
    reported_at = (stored or {}).get("reported_at")
    return not isinstance(reported_at, int | float) or now.timestamp() - reported_at >= interval
