"""Autoscaling I/O, called once per control-loop tick: gather metrics, decide (:mod:`.autoscaler`), apply, record.

``await ControlLoop.autoscaling.tick()`` (one :class:`Autoscaling` per control-loop term) does, in order:

1. **Scale from zero**, every tick. App proxies write ``DEMAND_PREFIX + <endpoint_id>`` when a request finds
   no route (:mod:`appproxy.hold`); a watch on that prefix notes the time and wakes the loop, so an endpoint at
   0 desired replicas with an enabled rule gets ``max(1, min_replicas)`` within about a second. Demand keys
   older than ``[autoscale] demand_window`` are deleted.
2. **Rules**, at most every ``[autoscale] evaluation_interval``: enabled rules of live endpoints; metric values
   from ``sessions.stats`` (kernel) and the app proxies' signed admin API (proxy, inference_framework; proxies
   found under ``PROXIES_PREFIX``), aggregated by :mod:`.autoscale_metrics`; one decision per endpoint.
3. **Apply**: ``endpoints.replicas`` is changed only if nobody changed it since it was read (a conditional
   update, so a concurrent ``scale`` by a user wins); the winning rule's ``last_triggered_at`` becomes now; the
   endpoint is poked so the reconciler acts at once.
4. **Record**: every change as an ``autoscaling_decision`` event; blocked decisions (cooldown, at a bound,
   demand) at most once per rule and reason per ``[autoscale] blocked_event_interval``.

Failures never break the control loop's tick: they are logged and the round is skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pydantic
import sqlalchemy as sa

from common.aio import cancel_and_wait
from common.protocol import DEMAND_PREFIX, PROXIES_PREFIX, DemandSignal, ProxyRegistration
from common.signing import RPCError
from common.status import EndpointLifecycle, SessionStatus
from manager.control.autoscale_metrics import observe
from manager.control.autoscaler import (
    BLOCKED,
    EndpointDecision,
    Outcome,
    Rule,
    RuleDecision,
    decide_endpoint,
    wake_from_zero,
)
from manager.db.models import AutoScalingRule, Endpoint, Event, Route, Session, route_serving_clause

log = logging.getLogger(__name__)

EVENT_KIND = "autoscaling_decision"
WATCH_RETRY = 1.0  # seconds before re-subscribing to the demand prefix after a failure
PROXY_ERROR_LOG_INTERVAL = 60.0  # seconds between log lines about one unreachable proxy


def rule_of(row: AutoScalingRule) -> Rule:
    return Rule(id=str(row.id), metric_source=row.metric_source, metric_name=row.metric_name,
                comparator=row.comparator, threshold=row.threshold, step_size=row.step_size,
                cooldown_seconds=row.cooldown_seconds, min_replicas=row.min_replicas,
                max_replicas=row.max_replicas, enabled=row.enabled,
                last_triggered_at=_aware(row.last_triggered_at) if row.last_triggered_at else None)


def event_data(decision: RuleDecision, *, applied: bool) -> dict[str, Any]:
    rule = decision.rule
    return {
        "rule_id": decision.rule_id,
        "metric_source": rule.metric_source if rule else None,
        "metric_name": rule.metric_name if rule else None,
        "comparator": rule.comparator if rule else None,
        "threshold": rule.threshold if rule else None,
        "step_size": rule.step_size if rule else None,
        "observed": decision.observed,
        "old_replicas": decision.old_replicas,
        "new_replicas": decision.new_replicas if applied else decision.old_replicas,
        "outcome": decision.outcome.value,
        "applied": applied,
        "reason": decision.reason,
    }


@dataclass(slots=True)
class _Demand:
    seen: float  # monotonic time the manager last saw it
    held: int
    proxy_id: str


class Autoscaling:
    """The autoscaler of one control-loop term: demand watch, rate limits, evaluation clock. Owned by the
    :class:`~manager.control.loop.ControlLoop` that created it; a new leader term starts with a fresh one."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.demand: dict[uuid.UUID, _Demand] = {}
        self._watch: asyncio.Task[None] | None = None
        self._last_evaluation = float("-inf")
        self._recorded: dict[tuple[str, str], float] = {}  # (rule id, outcome) → monotonic time last recorded
        self._proxy_errors: dict[str, float] = {}

    # -- the tick --------------------------------------------------------------------------------------------
    async def tick(self) -> None:
        try:
            self._ensure_watch()
            await self.scale_from_zero()
            if time.monotonic() - self._last_evaluation >= self.ctx.config.autoscale.evaluation_interval:
                self._last_evaluation = time.monotonic()
                await self.evaluate()
        except asyncio.CancelledError:
            raise
        except Exception:  # the rest of the control loop's tick must run regardless
            log.exception("autoscaling round failed")

    async def close(self) -> None:
        task, self._watch = self._watch, None
        await cancel_and_wait(task)

    # -- demand (scale from zero) ------------------------------------------------------------------------------
    def _ensure_watch(self) -> None:
        if self._watch is not None and not self._watch.done():
            return
        self._watch = asyncio.create_task(self._watch_demand(), name="autoscale-demand-watch")
        # Lives as long as the control loop that started it (the loop may stop, e.g. when leadership is lost).
        current = asyncio.current_task()
        if current is not None:
            watch = self._watch
            current.add_done_callback(lambda _task: watch.cancel())

    async def _watch_demand(self) -> None:
        while True:
            try:
                events = self.ctx.store.watch_prefix(DEMAND_PREFIX)
                try:
                    async for event in events:
                        if event.type == "reset":
                            self.demand.clear()
                            for key, value in (event.items or {}).items():
                                self._note(key, value, replay=True)
                        elif event.type == "put":
                            self._note(event.key, event.value or "", replay=False)
                finally:
                    await events.aclose()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("demand watch failed (%s: %s); re-subscribing in %.0fs", type(exc).__name__, exc,
                            WATCH_RETRY)
            await asyncio.sleep(WATCH_RETRY)

    def _note(self, key: str, value: str, *, replay: bool) -> None:
        try:
            signal = DemandSignal.model_validate_json(value)
        except pydantic.ValidationError:
            log.warning("ignoring malformed demand signal under %s", key)
            return
        now = time.monotonic()
        # A replayed key (watch start) counts from when the proxy wrote it; a live put from now (no clock skew).
        seen = now - max(0.0, time.time() - signal.at) if replay else now
        self.demand[signal.endpoint_id] = _Demand(seen, signal.held, signal.proxy_id)
        if now - seen <= self.ctx.config.autoscale.demand_window:
            self.ctx.wake.set()

    def waiting(self) -> set[uuid.UUID]:
        """Endpoints with requests waiting at a proxy (demand within ``demand_window``)."""
        window = self.ctx.config.autoscale.demand_window
        now = time.monotonic()
        return {e for e, d in self.demand.items() if now - d.seen <= window}

    async def _forget_stale_demand(self) -> None:
        window = self.ctx.config.autoscale.demand_window
        now = time.monotonic()
        for endpoint_id in [e for e, d in self.demand.items() if now - d.seen > window]:
            del self.demand[endpoint_id]
            try:
                await self.ctx.store.delete(DEMAND_PREFIX + str(endpoint_id))
            except Exception as exc:  # the store is down: the key is deleted in a later round
                log.debug("cannot delete the demand key of %s: %s", endpoint_id, exc)

    async def scale_from_zero(self) -> None:
        await self._forget_stale_demand()
        waiting = self.waiting()
        if not waiting:
            return
        ctx = self.ctx
        cap = ctx.config.limits.max_replicas
        now = datetime.now(UTC)
        woken: list[uuid.UUID] = []
        async with ctx.db() as db:
            endpoints = list((await db.execute(sa.select(Endpoint).where(
                Endpoint.id.in_(waiting), Endpoint.replicas == 0,
                Endpoint.lifecycle == EndpointLifecycle.CREATED))).scalars())
            if not endpoints:
                return
            rows = await _enabled_rules(db, [e.id for e in endpoints])
            rules_of: dict[uuid.UUID, list[AutoScalingRule]] = {}
            for r in rows:
                rules_of.setdefault(r.endpoint_id, []).append(r)
            for endpoint in endpoints:
                own = rules_of.get(endpoint.id, [])
                wake = wake_from_zero([rule_of(r) for r in own], 0, cap=cap)
                if wake is None:
                    continue
                target, rule = wake
                changed = (await db.execute(sa.update(Endpoint).where(
                    Endpoint.id == endpoint.id, Endpoint.replicas == 0,
                    Endpoint.lifecycle == EndpointLifecycle.CREATED).values(replicas=target))).rowcount
                if not changed:
                    continue
                row = next(r for r in own if str(r.id) == rule.id)
                row.last_triggered_at = now
                demand = self.demand.get(endpoint.id)
                held = demand.held if demand else 0
                decision = RuleDecision(rule.id, Outcome.SCALE, 0, target, float(held),
                                        f"scale from zero: {held} request(s) waiting at app proxy "
                                        f"{demand.proxy_id if demand else '?'}; 0 → {target} replicas", rule)
                data = event_data(decision, applied=True) | {"outcome": "scale_from_zero"}
                db.add(Event(endpoint_id=endpoint.id, kind=EVENT_KIND, created_at=now, data=data))
                woken.append(endpoint.id)
                log.info("endpoint %s (%s): scale from zero → %d replicas (demand at the app proxy)",
                         endpoint.name, endpoint.id, target)
            await db.commit()
        if woken:
            ctx.poke(*woken)

    # -- rules -------------------------------------------------------------------------------------------------
    async def evaluate(self) -> None:
        ctx = self.ctx
        cfg = ctx.config.autoscale
        async with ctx.db() as db:
            rows = await _enabled_rules(db)
            if not rows:
                return
            endpoint_ids = sorted({r.endpoint_id for r in rows})
            endpoints = {e.id: e for e in (await db.execute(sa.select(Endpoint).where(
                Endpoint.id.in_(endpoint_ids), Endpoint.lifecycle == EndpointLifecycle.CREATED,
                Endpoint.kind == "service"))).scalars()}
            serving = dict((await db.execute(
                sa.select(Route.endpoint_id, sa.func.count()).where(
                    Route.endpoint_id.in_(list(endpoints)), route_serving_clause())
                .group_by(Route.endpoint_id))).all())
            kernel_endpoints = {r.endpoint_id for r in rows if r.metric_source == "kernel"} & set(endpoints)
            samples: dict[uuid.UUID, list[dict[str, Any] | None]] = {}
            if kernel_endpoints:
                for endpoint_id, stats in (await db.execute(sa.select(Session.endpoint_id, Session.stats).where(
                        Session.endpoint_id.in_(list(kernel_endpoints)),
                        Session.status == SessionStatus.RUNNING))).all():
                    samples.setdefault(endpoint_id, []).append(stats)
        remote = {r.endpoint_id for r in rows if r.metric_source in ("proxy", "inference_framework")}
        reports = await self.proxy_reports(sorted(remote & set(endpoints)))
        now = datetime.now(UTC)
        wall = time.time()
        waiting = self.waiting()
        decisions: list[tuple[Endpoint, EndpointDecision]] = []
        rules_by_endpoint: dict[uuid.UUID, list[Rule]] = {}
        for r in rows:
            rules_by_endpoint.setdefault(r.endpoint_id, []).append(rule_of(r))
        for endpoint_id, endpoint in endpoints.items():
            own = rules_by_endpoint.get(endpoint_id, [])
            observed = {rule.id: observe(rule.metric_source, rule.metric_name,
                                         kernel_samples=samples.get(endpoint_id, []),
                                         reports=reports.get(endpoint_id, []),
                                         serving_replicas=serving.get(endpoint_id, 0), now=wall,
                                         kernel_max_age=cfg.kernel_stats_max_age) for rule in own}
            decision = decide_endpoint(own, endpoint.replicas, observed, now, cap=ctx.config.limits.max_replicas,
                                       demand_waiting=endpoint_id in waiting)
            decisions.append((endpoint, decision))
        await self.apply(decisions, now)

    async def apply(self, decisions: Iterable[tuple[Endpoint, EndpointDecision]], now: datetime) -> None:
        ctx = self.ctx
        changed: list[uuid.UUID] = []
        mono = time.monotonic()
        interval = ctx.config.autoscale.blocked_event_interval
        async with ctx.db() as db:
            for endpoint, decision in decisions:
                winner = decision.winner
                if decision.changes and winner is not None:
                    done = (await db.execute(sa.update(Endpoint).where(
                        Endpoint.id == endpoint.id, Endpoint.replicas == decision.replicas,
                        Endpoint.lifecycle == EndpointLifecycle.CREATED).values(
                        replicas=decision.new_replicas))).rowcount
                    if done:
                        await db.execute(sa.update(AutoScalingRule).where(
                            AutoScalingRule.id == uuid.UUID(winner.rule_id)).values(last_triggered_at=now))
                        db.add(Event(endpoint_id=endpoint.id, kind=EVENT_KIND, created_at=now,
                                     data=event_data(winner, applied=True)))
                        changed.append(endpoint.id)
                        log.info("endpoint %s (%s): autoscaling %s", endpoint.name, endpoint.id, winner.reason)
                for d in decision.decisions:
                    if d.outcome not in BLOCKED:
                        continue
                    key = (d.rule_id, d.outcome.value)
                    last = self._recorded.get(key)
                    if last is not None and mono - last < interval:
                        continue
                    self._recorded[key] = mono
                    db.add(Event(endpoint_id=endpoint.id, kind=EVENT_KIND, created_at=now,
                                 data=event_data(d, applied=False)))
            await db.commit()
        if changed:
            ctx.poke(*changed)

    # -- proxies -----------------------------------------------------------------------------------------------
    async def proxies(self) -> list[ProxyRegistration]:
        try:
            raw = await self.ctx.store.get_prefix(PROXIES_PREFIX)
        except Exception as exc:
            log.warning("cannot list the app proxies: %s", exc)
            return []
        found = []
        for key, value in raw.items():
            try:
                found.append(ProxyRegistration.model_validate_json(value))
            except pydantic.ValidationError:
                log.warning("ignoring malformed proxy registration under %s", key)
        return found

    async def proxy_reports(self, endpoint_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[dict[str, Any]]]:
        """Each endpoint's metrics report from every registered proxy that answered."""
        if not endpoint_ids:
            return {}
        proxies = await self.proxies()
        jobs = [(p, e) for p in proxies for e in endpoint_ids]
        results = await asyncio.gather(*(self._fetch(p, e) for p, e in jobs))
        out: dict[uuid.UUID, list[dict[str, Any]]] = {}
        for (_, endpoint_id), report in zip(jobs, results, strict=True):
            if report is not None:
                out.setdefault(endpoint_id, []).append(report)
        return out

    async def _fetch(self, proxy: ProxyRegistration, endpoint_id: uuid.UUID) -> dict[str, Any] | None:
        timeout = self.ctx.config.autoscale.metrics_timeout
        try:
            data = await asyncio.wait_for(self.ctx.agents.call(
                "GET", proxy.admin_url, f"/endpoints/{endpoint_id}/metrics", timeout=timeout), timeout)
        except RPCError as exc:
            if exc.status != 404:  # 404: that proxy has not seen the endpoint's table (yet)
                self._proxy_failed(proxy, f"HTTP {exc.status}: {exc.body}")
            return None
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            self._proxy_failed(proxy, f"{type(exc).__name__}: {exc}")
            return None
        return data if isinstance(data, dict) else None

    def _proxy_failed(self, proxy: ProxyRegistration, detail: str) -> None:
        now = time.monotonic()
        last = self._proxy_errors.get(proxy.proxy_id)
        if last is None or now - last >= PROXY_ERROR_LOG_INTERVAL:
            self._proxy_errors[proxy.proxy_id] = now
            log.warning("app proxy %s (%s) did not give metrics: %s", proxy.proxy_id, proxy.admin_url, detail)


async def _enabled_rules(db: Any, endpoint_ids: list[uuid.UUID] | None = None) -> list[AutoScalingRule]:
    """Enabled rules (of these endpoints), in a stable order: endpoint, creation time, id."""
    query = sa.select(AutoScalingRule).where(AutoScalingRule.enabled.is_(True))
    if endpoint_ids is not None:
        query = query.where(AutoScalingRule.endpoint_id.in_(endpoint_ids))
    return list((await db.execute(query.order_by(AutoScalingRule.endpoint_id, AutoScalingRule.created_at,
                                                 AutoScalingRule.id))).scalars())


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


__all__ = ["EVENT_KIND", "Autoscaling", "event_data", "rule_of"]
