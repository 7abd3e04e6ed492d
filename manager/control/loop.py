"""The manager's control loop: liveness → replicas → placement → termination → publishing.

Level-triggered and idempotent: each tick reads the state, decides with the pure functions of this package and
applies the result. It ticks every ``reconcile.interval`` and at once when woken (``ctx.poke``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import aiohttp
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from common.aio import wait_event
from common.protocol import KernelReport, KernelSpec
from common.signing import RPCError
from common.slots import ResourceSlots
from common.status import (
    ACTIVE_SESSION_STATES,
    AgentStatus,
    EndpointLifecycle,
    RouteHealth,
    RouteLifecycle,
    RouteTraffic,
    SessionStatus,
)
from common.store import ROUTES_PREFIX
from manager.context import ManagerContext
from manager.control import metrics
from manager.control.autoscale import Autoscaling
from manager.control.heartbeat import _aware, mark_replica_gone
from manager.control.planner import RouteView, backoff_delay, plan_replicas
from manager.control.publisher import publish_endpoints
from manager.control.scheduler import AgentCapacity, device_free_of, normalize_architecture, select_agent
from manager.db.models import Agent, Endpoint, Event, ModelFolder, Route, Session

log = logging.getLogger(__name__)
PLANNING_COLUMNS = (Endpoint.lifecycle, Endpoint.replicas, Endpoint.next_retry_at, Endpoint.revision,
                    Endpoint.max_surge, Endpoint.destroyed_at)
HEX_DIGITS = "0123456789abcdef"


async def live_holdings(db: AsyncSession) -> dict[str, list[tuple[dict[str, str] | None, ResourceSlots]]]:
    """Per agent id, what each of its live sessions holds: (reported GPU allocation or None, requested slots)."""
    held: dict[str, list[tuple[dict[str, str] | None, ResourceSlots]]] = defaultdict(list)
    for agent_id, slots, allocation in (await db.execute(
            sa.select(Session.agent_id, Session.occupied_slots, Session.allocation).where(
                Session.status.in_(ACTIVE_SESSION_STATES), Session.agent_id.is_not(None)))).all():
        held[agent_id].append((allocation, ResourceSlots.parse(slots)))
    return held


def total_slots(holdings: list[tuple[dict[str, str] | None, ResourceSlots]]) -> ResourceSlots:
    total = ResourceSlots()
    for _, request in holdings:
        total = total + request
    return total


class ControlLoop:
    """The leader's control loop: every tick runs the named phases of :meth:`steps` in order. Each phase has its
    own error handling (one that raises is logged and counted, and the next phases still run) and its own
    duration histogram (manager.control.metrics). The loop owns the autoscaler's state for its term."""

    def __init__(self, ctx: ManagerContext) -> None:
        self.ctx = ctx
        self.autoscaling = Autoscaling(ctx)
        self._last_resync = 0.0
        self._resync_digit: int | None = None  # None: check every table at the next publish (a new leader)
        self._last_placed: dict[str, str] = {}  # scaling group → agent chosen last (roundrobin's cursor)

    def steps(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        """The phases of one tick, in order (publish twice: after placing, and after draining)."""
        return [("mark_lost_agents", self.mark_lost_agents), ("autoscale", self.autoscale),
                ("reconcile_endpoints", self.reconcile_endpoints), ("schedule_pending", self.schedule_pending),
                ("publish", self.publish), ("terminate_draining", self.terminate_draining),
                ("publish", self.publish)]

    async def run(self) -> None:
        ctx = self.ctx
        try:
            while True:
                ctx.wake.clear()
                await self.tick()
                await wait_event(ctx.wake, ctx.config.reconcile.interval)
        finally:
            await self.autoscaling.close()

    async def tick(self) -> None:
        metrics.TICKS.inc()
        for name, step in self.steps():
            started = time.perf_counter()
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception:  # the other phases must run regardless
                metrics.PHASE_ERRORS.labels(name).inc()
                log.exception("control loop phase %s failed", name)
            finally:
                metrics.PHASE_SECONDS.labels(name).observe(time.perf_counter() - started)

    async def autoscale(self) -> None:
        """Autoscaling rules and scale from zero (all of it in manager.control.autoscale)."""
        await self.autoscaling.tick()

    async def publish(self) -> None:
        """Publish the dirty endpoints' tables, and re-check one slice of all tables against the store.

        The resync heals a store that lost data or was written by someone else. All 2,000 tables of
        bench/control_plane at once took 1–3 s of one tick, so it goes by id: every sixteenth of
        ``reconcile.route_resync_period`` the endpoints whose id starts with the next hex digit (one range read
        of the store each). A new leader's first tick checks every table."""
        ctx = self.ctx
        resync: set[uuid.UUID] = set()
        now = time.monotonic()
        step = ctx.config.reconcile.route_resync_period / len(HEX_DIGITS)
        if self._resync_digit is None or now - self._last_resync > step:
            digit = "" if self._resync_digit is None else HEX_DIGITS[self._resync_digit]
            async with ctx.db() as db:
                # a uuid's text starts with the same hex digit in both databases (SQLite: 32 hex, PostgreSQL: dashed)
                resync = set((await db.execute(sa.select(Endpoint.id).where(
                    Endpoint.lifecycle != EndpointLifecycle.DESTROYED,
                    sa.cast(Endpoint.id, sa.String).like(digit + "%")))).scalars())
            self._resync_digit = (0 if self._resync_digit is None
                                  else (self._resync_digit + 1) % len(HEX_DIGITS))
            self._last_resync = now
            ctx.dirty_endpoints -= resync
            await publish_endpoints(ctx, resync, force=True, stored_prefix=ROUTES_PREFIX + digit)
        dirty, ctx.dirty_endpoints = ctx.dirty_endpoints, set()
        await publish_endpoints(ctx, dirty)

    async def mark_lost_agents(self) -> None:
        ctx = self.ctx
        cutoff = datetime.now(UTC) - timedelta(seconds=ctx.config.reconcile.agent_heartbeat_timeout)
        async with ctx.db() as db:
            lost = list((await db.execute(sa.select(Agent).where(
                Agent.status == AgentStatus.ALIVE, Agent.last_heartbeat < cutoff))).scalars())
            if not lost:
                return
            for agent in lost:
                agent.status = AgentStatus.LOST
                log.warning("agent %s lost (no heartbeat since %s)", agent.id, agent.last_heartbeat)
            rows = (await db.execute(sa.select(Route, Session).join(Session, Session.id == Route.session_id).where(
                Session.agent_id.in_([a.id for a in lost]), Session.status.in_(ACTIVE_SESSION_STATES)))).all()
            now = datetime.now(UTC)
            for route, session in rows:
                if mark_replica_gone(session, route, now, "agent_lost", f"agent {session.agent_id} was lost"):
                    ctx.dirty_endpoints.add(route.endpoint_id)
            await db.commit()

    async def reconcile_endpoints(self) -> None:
        """Desired vs live replicas per endpoint: create routes, drain routes, finish destroyed endpoints.

        Reads plain rows, not ORM objects (2,000 endpoints and 3,000 routes as objects cost a third of a second
        per tick in bench/control_plane), and writes only what the plans change."""
        ctx = self.ctx
        now = datetime.now(UTC)
        async with ctx.db() as db:
            endpoints = (await db.execute(sa.select(Endpoint.id, *PLANNING_COLUMNS).where(
                Endpoint.lifecycle != EndpointLifecycle.DESTROYED))).all()
            if not endpoints:
                return
            metrics.ENDPOINTS_RECONCILED.inc(len(endpoints))
            by_endpoint: dict[uuid.UUID, list[RouteView]] = defaultdict(list)
            for route_id, endpoint_id, route_lifecycle, health, created_at, revision in (await db.execute(
                    sa.select(Route.id, Route.endpoint_id, Route.lifecycle, Route.health, Route.created_at,
                              Route.revision).where(Route.lifecycle.in_(
                                  [RouteLifecycle.PROVISIONING, RouteLifecycle.RUNNING,
                                   RouteLifecycle.TERMINATING])))).all():
                by_endpoint[endpoint_id].append(RouteView(route_id, route_lifecycle, health, _aware(created_at),
                                                          revision))
            drain: list[uuid.UUID] = []
            destroyed: list[uuid.UUID] = []
            for endpoint_id, lifecycle, replicas, next_retry_at, revision, max_surge, _ in endpoints:
                own = by_endpoint.get(endpoint_id, [])
                desired = replicas if lifecycle == EndpointLifecycle.CREATED else 0
                can_start = next_retry_at is None or _aware(next_retry_at) <= now
                plan = plan_replicas(desired, own, can_start, revision=revision, max_surge=max_surge)
                for _ in range(plan.create):
                    db.add(Route(id=uuid.uuid4(), endpoint_id=endpoint_id, lifecycle=RouteLifecycle.PROVISIONING,
                                 health=RouteHealth.NOT_CHECKED, traffic=RouteTraffic.ACTIVE, traffic_ratio=1.0,
                                 revision=revision))
                if plan.drain:
                    drain += plan.drain
                    ctx.dirty_endpoints.add(endpoint_id)
                if plan.create or plan.drain:
                    db.add(Event(endpoint_id=endpoint_id, kind="replicas_planned",
                                 data={"create": plan.create, "drain": [str(r) for r in plan.drain],
                                       "revision": revision, "rolling": plan.rolling}))
                if lifecycle == EndpointLifecycle.DESTROYING and not own:
                    destroyed.append(endpoint_id)
                    db.add(Event(endpoint_id=endpoint_id, kind="endpoint_destroyed", data={}))
                    ctx.dirty_endpoints.add(endpoint_id)
            if drain:  # the planner only drains live routes; the condition keeps a concurrent change intact
                await db.execute(sa.update(Route).where(Route.id.in_(drain), Route.lifecycle.in_(
                    [RouteLifecycle.PROVISIONING, RouteLifecycle.RUNNING])).values(
                        lifecycle=RouteLifecycle.TERMINATING, traffic=RouteTraffic.INACTIVE))
            if destroyed:
                await db.execute(sa.update(Endpoint).where(Endpoint.id.in_(destroyed)).values(
                    lifecycle=EndpointLifecycle.DESTROYED, destroyed_at=now))
            await db.commit()

    async def _capacities(self, db: AsyncSession) -> dict[str, tuple[Agent, AgentCapacity]]:
        """Alive agents and what is free on each: slots their live sessions hold, free share per GPU."""
        agents = list((await db.execute(sa.select(Agent).where(Agent.status == AgentStatus.ALIVE))).scalars())
        held = await live_holdings(db)
        return {a.id: (a, AgentCapacity(a.id, a.scaling_group, normalize_architecture(a.architecture),
                                        ResourceSlots.parse(a.available_slots), total_slots(held.get(a.id, [])),
                                        0, device_free_of(a.devices, held.get(a.id, []))))
                for a in agents}

    async def schedule_pending(self) -> None:
        """Place every unplaced route, then send the start calls (all at once) and record the answers."""
        ctx = self.ctx
        starts: list[tuple[str, str, KernelSpec]] = []
        async with ctx.db() as db:
            pending = (await db.execute(
                sa.select(Route, Endpoint).join(Endpoint, Endpoint.id == Route.endpoint_id).where(
                    Route.lifecycle == RouteLifecycle.PROVISIONING, Route.session_id.is_(None),
                    Endpoint.lifecycle == EndpointLifecycle.CREATED).order_by(Route.created_at))).all()
            if not pending:
                return
            # one capacity per agent for the whole tick, replaced as replicas are placed on it
            agents = await self._capacities(db)
            capacities = {agent_id: capacity for agent_id, (_, capacity) in agents.items()}
            replicas_on: dict[uuid.UUID, dict[str, int]] = defaultdict(lambda: defaultdict(int))
            for agent_id, endpoint_id in (await db.execute(sa.select(Session.agent_id, Session.endpoint_id).where(
                    Session.status.in_(ACTIVE_SESSION_STATES)))).all():
                if agent_id is not None:  # an active session is placed: it has an agent
                    replicas_on[endpoint_id][agent_id] += 1
            folders = {f.id: f for f in (await db.execute(sa.select(ModelFolder).where(
                ModelFolder.id.in_([e.model_folder_id for _, e in pending])))).scalars()}
            placed: list[tuple[Route, Session]] = []
            for route, endpoint in pending:
                if route.revision != endpoint.revision:
                    continue  # superseded before it was placed; the planner retires it
                request = ResourceSlots.parse(endpoint.resource_slots)
                # an image is built for one architecture; a local-runtime process runs on whatever the host is
                arch = normalize_architecture(endpoint.architecture) if endpoint.image else None
                placement = select_agent(request, list(capacities.values()), endpoint.scaling_group, arch,
                                         ctx.config.scheduler.strategy_for(endpoint.scaling_group),
                                         self._last_placed.get(endpoint.scaling_group),
                                         endpoint_replicas=replicas_on[endpoint.id])
                folder = folders.get(endpoint.model_folder_id) if endpoint.model_folder_id else None
                if placement.agent_id is None or folder is None:
                    reason = placement.reason or "the model folder was deleted"
                    if (route.error_data or {}).get("message") != reason:
                        route.error_data = {"type": "unschedulable", "message": reason}
                        db.add(Event(endpoint_id=endpoint.id, route_id=route.id, kind="unschedulable",
                                     data={"reason": reason}))
                    continue
                agent = agents[placement.agent_id][0]
                session = Session(id=uuid.uuid4(), endpoint_id=endpoint.id, route_id=route.id, agent_id=agent.id,
                                  occupied_slots=request.to_json(), status=SessionStatus.STARTING,
                                  status_history=[{"status": SessionStatus.STARTING.value,
                                                   "at": datetime.now(UTC).isoformat()}])
                db.add(session)
                placed.append((route, session))
                route.error_data = None
                capacities[agent.id] = capacities[agent.id].taking(request)
                self._last_placed[endpoint.scaling_group] = agent.id
                replicas_on[endpoint.id][agent.id] += 1
                spec = KernelSpec(
                    kernel_id=session.id, endpoint_id=endpoint.id, route_id=route.id, endpoint_name=endpoint.name,
                    folder_relpath=folder.host_relpath, mount_destination=endpoint.model_mount_destination,
                    model_definition=endpoint.model_definition, environ=dict(endpoint.environ or {}),
                    resource_slots=request.to_json(), image=endpoint.image, runtime_variant=endpoint.runtime_variant,
                    network_outbound=endpoint.network_outbound)
                starts.append((agent.id, agent.rpc_url, spec))
            if placed:  # one flush inserts every session; only then may the routes point at them (foreign key)
                await db.flush()
                for route, session in placed:
                    route.session_id = session.id
            await db.commit()
        if not starts:
            return
        answers = await asyncio.gather(*(self._start_kernel(*start) for start in starts))
        started = {spec.kernel_id: report for (_, _, spec), report in zip(starts, answers, strict=True)
                   if report is not None}
        metrics.REPLICAS_STARTED.inc(len(started))
        if started:  # one transaction records where every answered replica listens
            async with ctx.db() as db:
                for session in (await db.execute(sa.select(Session).where(
                        Session.id.in_(list(started)), Session.status == SessionStatus.STARTING))).scalars():
                    report = started[session.id]
                    session.host, session.port, session.runtime_handle = report.host, report.port, report.handle
                await db.commit()

    async def _start_kernel(self, agent_id: str, rpc_url: str, spec: KernelSpec) -> KernelReport | None:
        """The agent's answer to the start call; None when it failed (the route is then failed and backed off)."""
        ctx = self.ctx
        try:
            data = await ctx.agents.call("POST", rpc_url, "/rpc/kernels", spec.model_dump(mode="json"),
                                         timeout=ctx.config.reconcile.rpc_timeout)
            report = KernelReport.model_validate(data)
        except (TimeoutError, RPCError, aiohttp.ClientError, ValueError) as exc:
            detail = exc.body if isinstance(exc, RPCError) else str(exc) or type(exc).__name__
            if isinstance(detail, dict):
                detail = detail.get("detail") or detail.get("title") or str(detail)
            await self._fail_start(spec, agent_id, f"agent {agent_id} could not start the replica: {detail}")
            return None
        log.info("started replica %s of %s on %s (%s:%s)", spec.route_id, spec.endpoint_name, agent_id,
                 report.host, report.port)
        return report

    async def _fail_start(self, spec: KernelSpec, agent_id: str, message: str) -> None:
        ctx = self.ctx
        rc = ctx.config.reconcile
        now = datetime.now(UTC)
        log.warning("%s", message)
        async with ctx.db() as db:
            session = await db.get(Session, spec.kernel_id)
            route = await db.get(Route, spec.route_id)
            endpoint = await db.get(Endpoint, spec.endpoint_id)
            if session is not None:
                session.status = SessionStatus.FAILED
                session.terminated_at = now
            if route is not None and route.lifecycle == RouteLifecycle.PROVISIONING:
                route.lifecycle = RouteLifecycle.FAILED_TO_START
                route.health = RouteHealth.UNHEALTHY
                route.traffic = RouteTraffic.INACTIVE
                route.error_data = {"type": "creation_failed", "message": message, "session_id": str(spec.kernel_id),
                                    "errors": [{"src": "manager", "name": "AgentRPCError", "repr": message}]}
                db.add(Event(endpoint_id=spec.endpoint_id, route_id=spec.route_id, kind="route_failed_to_start",
                             data=route.error_data))
            if endpoint is not None:
                endpoint.retries += 1
                endpoint.next_retry_at = now + timedelta(seconds=backoff_delay(endpoint.retries, rc.backoff_base,
                                                                               rc.backoff_max))
            await db.commit()

    async def terminate_draining(self) -> None:
        ctx = self.ctx
        grace_cutoff = datetime.now(UTC) - timedelta(seconds=ctx.config.reconcile.drain_grace)
        async with ctx.db() as db:
            rows = (await db.execute(
                sa.select(Route, Session, Agent).outerjoin(Session, Session.id == Route.session_id)
                .outerjoin(Agent, Agent.id == Session.agent_id)
                .where(Route.lifecycle == RouteLifecycle.TERMINATING))).all()
            ready = []
            for route, session, agent in rows:
                no_kernel = (session is None or session.status not in ACTIVE_SESSION_STATES
                             or agent is None or agent.status != AgentStatus.ALIVE)
                if no_kernel:
                    route.lifecycle = RouteLifecycle.TERMINATED
                    if session is not None and session.status in ACTIVE_SESSION_STATES:
                        session.status = SessionStatus.TERMINATED
                        session.terminated_at = datetime.now(UTC)
                    ctx.dirty_endpoints.add(route.endpoint_id)
                elif _aware(route.updated_at) <= grace_cutoff:
                    ready.append((route.id, session.id, agent.id, agent.rpc_url))
            await db.commit()
        if not ready:
            return
        results = await asyncio.gather(*(self._destroy_kernel(*item) for item in ready))
        destroyed = [(route_id, session_id) for (route_id, session_id, _, _), ok in zip(ready, results, strict=True)
                     if ok]
        if not destroyed:
            return
        metrics.REPLICAS_STOPPED.inc(len(destroyed))
        async with ctx.db() as db:  # one transaction for every replica its agent stopped
            routes = {r.id: r for r in (await db.execute(sa.select(Route).where(
                Route.id.in_([r for r, _ in destroyed])))).scalars()}
            sessions = {s.id: s for s in (await db.execute(sa.select(Session).where(
                Session.id.in_([s for _, s in destroyed])))).scalars()}
            for route_id, session_id in destroyed:
                stopped, stopped_route = sessions.get(session_id), routes.get(route_id)
                if stopped is not None and stopped.status in ACTIVE_SESSION_STATES:
                    stopped.status = SessionStatus.TERMINATED
                    stopped.terminated_at = datetime.now(UTC)
                if stopped_route is not None and stopped_route.lifecycle == RouteLifecycle.TERMINATING:
                    stopped_route.lifecycle = RouteLifecycle.TERMINATED
                    ctx.dirty_endpoints.add(stopped_route.endpoint_id)
            await db.commit()
        ctx.wake.set()

    async def _destroy_kernel(self, route_id: uuid.UUID, session_id: uuid.UUID, agent_id: str,
                              rpc_url: str) -> bool:
        """Ask the agent to stop one replica; False (retried next tick) when it could not be reached."""
        try:
            await self.ctx.agents.call("DELETE", rpc_url, f"/rpc/kernels/{session_id}",
                                       timeout=self.ctx.config.reconcile.rpc_timeout)
        except (TimeoutError, RPCError, aiohttp.ClientError) as exc:
            log.warning("agent %s could not destroy kernel %s: %s (will retry)", agent_id, session_id, exc)
            return False
        return True


__all__ = ["ControlLoop", "live_holdings", "total_slots"]
