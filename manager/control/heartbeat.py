"""Applies agent heartbeats: upserts the agent, moves routes by kernel reports, finds orphans and vanished kernels.

Heartbeats are level-triggered (full kernel list each time), so applying the same one twice changes nothing.
Each kernel's utilisation sample (``KernelReport.stats``) is kept in ``sessions.stats`` with ``reported_at`` (the
manager's clock) for ``kernel`` autoscaling rules.

Most beats change nothing: at 200 agents every 3 s, loading each agent's sessions, routes and endpoints as ORM
objects (JSON columns decoded) kept the manager busy on heartbeats alone (bench/control_plane). So a beat first
reads plain rows and :func:`triage` (pure) picks the kernels that need a write; only those are loaded as ORM
objects and changed. An unchanged agent row is not touched at all: its beat time is queued and written with the
other agents' once a second (manager.control.agent_beats).
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from common.protocol import AgentHeartbeat, HeartbeatReply, KernelReport
from common.status import (
    ACTIVE_SESSION_STATES,
    GIVEN_UP_SESSION_STATES,
    AgentStatus,
    KernelStatus,
    RouteHealth,
    RouteLifecycle,
    RouteTraffic,
    SessionStatus,
)
from manager.config import ReconcileSection
from manager.context import ManagerContext
from manager.control.planner import backoff_delay
from manager.control.transitions import TERMINAL_KERNEL, decide_route_change
from manager.db.models import Agent, Endpoint, Event, Route, Session

log = logging.getLogger(__name__)
# the agent columns a heartbeat carries (everything but status and the timestamps)
AGENT_REPORTED = ("rpc_url", "replica_host", "scaling_group", "architecture", "runtime", "available_slots",
                  "devices", "version")
SESSION_ROW = (Session.id, Session.agent_id, Session.status, Session.host, Session.port, Session.runtime_handle,
               Session.allocation, Session.stats, Session.created_at, Session.terminated_at,
               Route.lifecycle, Route.health, Route.traffic)


@dataclasses.dataclass(frozen=True, slots=True)
class SessionRow:
    """What triage reads of one session and its route (route fields None: the route row is gone)."""
    id: uuid.UUID
    agent_id: str | None
    status: str
    host: str | None
    port: int | None
    handle: str | None
    allocation: Mapping[str, str] | None
    stats: Mapping[str, Any] | None
    created_at: datetime | None
    terminated_at: datetime | None
    lifecycle: RouteLifecycle | None
    health: RouteHealth | None
    traffic: RouteTraffic | None


@dataclasses.dataclass(frozen=True, slots=True)
class Triage:
    destroy: list[uuid.UUID]  # orphans: kernels the agent should stop
    work: set[uuid.UUID]  # sessions whose row or route must change


@dataclasses.dataclass(frozen=True, slots=True)
class Grace:
    """How long a kernel the agent does not list may be missing before it counts as vanished."""
    answered: timedelta  # the agent answered the start call (session.port set)
    unanswered: timedelta  # the start call is still out: the grace plus the RPC timeout
    stats_interval: float  # seconds between writes of a kernel's utilisation sample


def triage(agent_id: str, reported: Mapping[uuid.UUID, KernelReport], rows: Iterable[SessionRow], now: datetime,
           grace: Grace) -> Triage:
    """Which reported kernels are orphans and which sessions need a write. Pure; ``apply_heartbeat`` acts on it."""
    destroy: list[uuid.UUID] = []
    work: set[uuid.UUID] = set()
    by_id = {row.id: row for row in rows}
    for kernel_id, report in reported.items():
        row = by_id.get(kernel_id)
        if row is None or row.lifecycle is None or row.status in GIVEN_UP_SESSION_STATES:
            if report.status not in TERMINAL_KERNEL:
                destroy.append(kernel_id)  # an orphan: unknown, or we already gave up on it
            continue
        if _needs_write(row, report, now, grace.stats_interval):
            work.add(kernel_id)
    for row in by_id.values():
        if row.id not in reported and _vanished(row, agent_id, now, grace):
            work.add(row.id)
    return Triage(destroy, work)


def _needs_write(row: SessionRow, report: KernelReport, now: datetime, stats_interval: float) -> bool:
    assert row.lifecycle is not None and row.health is not None and row.traffic is not None
    return (row.status != report.status.value
            or (row.host, row.port, row.handle) != (report.host, report.port, report.handle)
            or bool(report.allocation and row.allocation != report.allocation)
            or (report.stats is not None and _stats_due(row.stats, now, stats_interval))
            or (report.status in TERMINAL_KERNEL and row.terminated_at is None)
            or decide_route_change(row.lifecycle, row.health, row.traffic, report, row.id) is not None)


def _vanished(row: SessionRow, agent_id: str, now: datetime, grace: Grace) -> bool:
    """A kernel we started on this agent that it no longer lists (e.g. the host rebooted).

    The grace counts from the agent's answer to the start call (session.port set), not from placement: a burst
    of placements can keep start calls queued for a while. A call that never got answered is given rpc_timeout
    on top (the loop's own failure path normally ends it first)."""
    if row.agent_id != agent_id or row.status not in ACTIVE_SESSION_STATES or row.created_at is None:
        return False
    return _aware(row.created_at) < now - (grace.answered if row.port is not None else grace.unanswered)


async def apply_heartbeat(ctx: ManagerContext, hb: AgentHeartbeat) -> tuple[HeartbeatReply, set[uuid.UUID]]:
    """Returns the reply for the agent and the endpoints whose route tables changed."""
    now = datetime.now(UTC)
    rc = ctx.config.reconcile
    grace = Grace(timedelta(seconds=rc.kernel_report_grace),
                  timedelta(seconds=rc.kernel_report_grace + rc.rpc_timeout), ctx.config.autoscale.evaluation_interval)
    changed: set[uuid.UUID] = set()
    async with ctx.db() as db:
        agent_row = await _record_agent(ctx, db, hb, now)
        reported = {k.kernel_id: k for k in hb.kernels}
        rows = [SessionRow(*row) for row in (await db.execute(
            sa.select(*SESSION_ROW).outerjoin(Route, Route.id == Session.route_id).where(
                sa.or_(Session.id.in_(list(reported)),
                       sa.and_(Session.agent_id == hb.agent_id, Session.status.in_(ACTIVE_SESSION_STATES)))))).all()]
        found = triage(hb.agent_id, reported, rows, now, grace)
        if found.work:
            changed = await _apply_changes(db, hb.agent_id, reported, found.work, now, grace, rc)
        await db.commit()
    if agent_row is not None and ctx.agent_beats is not None:
        ctx.agent_beats.confirm(hb.agent_id, agent_row)  # committed: the next beats may skip the agent row
    return HeartbeatReply(destroy=found.destroy), changed


async def _record_agent(ctx: ManagerContext, db: AsyncSession, hb: AgentHeartbeat, now: datetime
                        ) -> dict[str, Any] | None:
    """Register the agent or refresh its row; returns what it reported when the row was read or written (to be
    remembered once committed). An unchanged agent whose row is known to be alive costs nothing here: its beat
    time is queued and written with the others' (manager.control.agent_beats)."""
    beats = ctx.agent_beats
    reported = {"rpc_url": hb.rpc_url, "replica_host": hb.replica_host, "scaling_group": hb.scaling_group,
                "architecture": hb.architecture, "runtime": hb.runtime, "available_slots": hb.available_slots,
                "devices": list(hb.devices) or None, "version": hb.version}
    if beats is not None and beats.unchanged(hb.agent_id, reported):
        beats.beat(hb.agent_id, now)
        return None
    stored = (await db.execute(sa.select(Agent.status, *(getattr(Agent, f) for f in AGENT_REPORTED)).where(
        Agent.id == hb.agent_id))).first()
    if stored is not None and stored[0] == AgentStatus.ALIVE and dict(zip(AGENT_REPORTED, stored[1:],
                                                                           strict=True)) == reported:
        await db.execute(sa.update(Agent).where(Agent.id == hb.agent_id).values(last_heartbeat=now))
    else:
        agent = await db.get(Agent, hb.agent_id)
        if agent is None:
            agent = Agent(id=hb.agent_id, first_contact=now)
            db.add(agent)
            log.info("agent %s registered (%s)", hb.agent_id, hb.rpc_url)
        elif agent.status == AgentStatus.LOST:
            log.info("agent %s is back", hb.agent_id)
        for field, value in reported.items():
            setattr(agent, field, value)
        agent.status = AgentStatus.ALIVE
        agent.last_heartbeat = now
    return reported


async def _apply_changes(db: AsyncSession, agent_id: str, reported: Mapping[uuid.UUID, KernelReport],
                         work: set[uuid.UUID], now: datetime, grace: Grace, rc: ReconcileSection) -> set[uuid.UUID]:
    """Load the sessions triage picked (with their routes and endpoints) and apply the reports to them."""
    changed: set[uuid.UUID] = set()
    sessions = list((await db.execute(sa.select(Session).where(Session.id.in_(list(work))))).scalars())
    routes = {r.id: r for r in (await db.execute(sa.select(Route).where(
        Route.id.in_([s.route_id for s in sessions])))).scalars()}
    endpoints = {e.id: e for e in (await db.execute(sa.select(Endpoint).where(
        Endpoint.id.in_([r.endpoint_id for r in routes.values()])))).scalars()}
    for session in sessions:
        route = routes.get(session.route_id)
        report = reported.get(session.id)
        if report is None:
            if (session.agent_id == agent_id and session.status in ACTIVE_SESSION_STATES  # still, after triage
                    and mark_replica_gone(session, route, now, "replica_vanished",
                                          f"agent {agent_id} no longer reports kernel {session.id}")):
                changed.add(session.endpoint_id)
            continue
        if route is None:
            continue
        new_status = SessionStatus(report.status.value)
        if session.status != new_status:
            session.status_history = [*(session.status_history or []),
                                      {"status": new_status, "at": now.isoformat()}][-20:]
            session.status = new_status
        session.host, session.port, session.runtime_handle = report.host, report.port, report.handle
        if report.allocation and session.allocation != report.allocation:
            session.allocation = report.allocation  # which GPUs (and how much of each) the kernel holds
        if report.stats is not None and _stats_due(session.stats, now, grace.stats_interval):
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
    return changed


def mark_replica_gone(session: Session, route: Route | None, now: datetime, error_type: str, message: str) -> bool:
    """A replica's kernel is gone (its agent lost it or was lost): the session ends as lost and its route, if
    still live or draining, leaves traffic as terminated with the reason. True when the route changed."""
    session.status = SessionStatus.LOST
    session.terminated_at = now
    if route is None or route.lifecycle not in (RouteLifecycle.PROVISIONING, RouteLifecycle.RUNNING,
                                                RouteLifecycle.TERMINATING):
        return False
    route.lifecycle = RouteLifecycle.TERMINATED
    route.health = RouteHealth.UNHEALTHY
    route.traffic = RouteTraffic.INACTIVE
    route.error_data = {"type": error_type, "message": message, "session_id": str(session.id)}
    return True


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _stats_due(stored: Mapping[str, Any] | None, now: datetime, interval: float) -> bool:
    """Whether a kernel's stored utilisation is older than ``interval`` (or missing) and should be rewritten."""
    reported_at = (stored or {}).get("reported_at")
    return not isinstance(reported_at, int | float) or now.timestamp() - reported_at >= interval


__all__ = ["ACTIVE_SESSION_STATES", "KernelStatus", "Triage", "apply_heartbeat", "mark_replica_gone", "triage"]
