"""The dry run behind ``POST /services/_/try``: start one real replica of the service, wait until it is healthy
(or fails), report progress as background-task events, and tear it down.

The replica runs as a hidden endpoint (``kind = "dry_run"``, name ``model-eval-<hex>``, no URL) so that the
normal control loop places, starts, supervises and removes it: no second code path for starting replicas.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from common.definitions import ModelDefinition
from common.status import EndpointLifecycle, RouteLifecycle, route_ready
from manager.bgtasks import BackgroundTask
from manager.context import ManagerContext
from manager.db.models import Agent, Endpoint, Event, Route, Session

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.5
LOG_TAIL_LINES = 200  # container log lines reported at the end of a dry run (the console's Validate modal)
LOG_MAX_CHARS = 16 * 1024  # ... and at most this much of them, so one event stays small
# While the replica starts, its log is re-read this often and sent when it changed (each event replaces the last):
# live enough to watch a model load, and within the task's event budget (bgtasks.MAX_EVENTS_PER_TASK) for a
# dry run of up to ten minutes; the final log always rides on the terminal event.
LOG_INTERVAL = 3.0
MIN_WAIT = 60.0  # seconds, even for a definition without health-check timing
MAX_WAIT = 1800.0  # the runtime-variant default initial_delay; bounds a dry run


def dry_run_deadline(definition: dict[str, Any]) -> float:
    """How long to wait for the replica: its health-check contract plus a start-up margin, bounded."""
    check = ModelDefinition.model_validate(definition).health_check()
    if check is None:
        return MIN_WAIT
    budget = check.initial_delay + check.interval * (check.max_retries + 1) + 30.0
    return min(MAX_WAIT, max(MIN_WAIT, budget))


def _message(event: str, session_id: uuid.UUID | None = None, **extra: object) -> str:
    return json.dumps({"event": event, "session_id": str(session_id) if session_id else None, **extra})


async def container_log(ctx: ManagerContext, session_id: uuid.UUID | None) -> str:
    """The replica's recent stdout and stderr from its agent (best effort: empty when it cannot be had)."""
    if session_id is None:
        return ""
    async with ctx.db() as db:
        row = (await db.execute(sa.select(Agent.rpc_url).join(Session, Session.agent_id == Agent.id)
                                .where(Session.id == session_id))).first()
    if row is None:
        return ""
    try:
        logs = await ctx.agents.call("GET", row[0], f"/rpc/kernels/{session_id}/logs?tail={LOG_TAIL_LINES}",
                                     timeout=ctx.config.reconcile.rpc_timeout)
    except Exception as exc:  # the log is a courtesy: never fail the dry run over it
        log.info("no container log for %s: %s", session_id, exc)
        return ""
    parts = [f"[{name}]\n{text}" for name in ("stdout", "stderr")
             if isinstance(logs, dict) and (text := str(logs.get(name) or "")).strip()]
    return "\n".join(parts)[-LOG_MAX_CHARS:]


class LogFollower:
    """The replica's log as container_log events: re-read every LOG_INTERVAL, sent only when it changed."""

    def __init__(self, ctx: ManagerContext, task: BackgroundTask) -> None:
        self.ctx, self.task = ctx, task
        self.last = ""
        self.read_at = float("-inf")

    async def poll(self, session_id: uuid.UUID | None, force: bool = False) -> str:
        if session_id is None or (not force and time.monotonic() - self.read_at < LOG_INTERVAL):
            return self.last
        self.read_at = time.monotonic()
        text = await container_log(self.ctx, session_id)
        if text and text != self.last:
            self.last = text
            if not force:
                self.task.emit("bgtask_updated", _message("container_log", session_id, log=text), 2, 3)
        return self.last


async def run_dry_run(ctx: ManagerContext, task: BackgroundTask, new_endpoint: Callable[..., Endpoint],
                      definition: dict[str, Any]) -> None:
    """``new_endpoint(name=, kind=, port=, url=)``: the hidden endpoint's row, one replica of the service asked
    for (the API layer builds it from the request: :func:`manager.services.write.new_endpoint`); ``definition``:
    its resolved model definition."""
    endpoint = new_endpoint(name=f"model-eval-{uuid.uuid4().hex[:10]}", kind="dry_run", port=None, url=None)
    async with ctx.db() as db:
        db.add(endpoint)
        db.add(Event(endpoint_id=endpoint.id, kind="dry_run_started", data={"task_id": str(task.id)}))
        await db.commit()
    ctx.poke(endpoint.id)
    task.emit("bgtask_updated", _message("session_enqueued"), 1, 3)
    deadline = time.monotonic() + dry_run_deadline(definition)
    announced_start = False
    logs = LogFollower(ctx, task)
    try:
        while True:
            async with ctx.db() as db:
                route = (await db.execute(sa.select(Route).where(Route.endpoint_id == endpoint.id)
                                          .order_by(Route.created_at.desc()).limit(1))).scalar_one_or_none()
            if route is not None and route.session_id and not announced_start:
                task.emit("bgtask_updated", _message("session_started", route.session_id), 2, 3)
                announced_start = True
            if route is not None and route_ready(route.lifecycle, route.health):
                task.emit("bgtask_updated", _message("session_healthy", route.session_id), 3, 3)
                task.emit("bgtask_done", "the model service started and passed its health check",
                          session_id=str(route.session_id), log=await logs.poll(route.session_id, force=True))
                return
            if route is not None and route.lifecycle in (RouteLifecycle.FAILED_TO_START, RouteLifecycle.TERMINATED):
                err = route.error_data or {}
                detail = err.get("message") or route.lifecycle.value
                tail = (err.get("stderr_tail") or "").strip()
                task.emit("bgtask_failed", f"the model service failed to start: {detail}"
                          + (f"\n{tail[-2000:]}" if tail else ""), errors=[err],
                          log=await logs.poll(route.session_id, force=True) or tail[-LOG_MAX_CHARS:])
                return
            if route is not None and route.error_data and route.error_data.get("type") == "unschedulable":
                task.emit("bgtask_failed", f"the replica cannot be placed: {route.error_data.get('message')}")
                return
            if time.monotonic() > deadline:
                task.emit("bgtask_failed", "timed out waiting for the replica to become healthy",
                          log=await logs.poll(route.session_id if route else None, force=True))
                return
            if route is not None and announced_start:
                await logs.poll(route.session_id)
            await asyncio.sleep(POLL_INTERVAL)
    finally:
        async with ctx.db() as db:
            row = await db.get(Endpoint, endpoint.id)
            if row is not None and row.lifecycle == EndpointLifecycle.CREATED:
                row.lifecycle = EndpointLifecycle.DESTROYING
                row.replicas = 0
                db.add(Event(endpoint_id=endpoint.id, kind="dry_run_finished", data={"task_id": str(task.id)}))
                await db.commit()
        ctx.poke(endpoint.id)
