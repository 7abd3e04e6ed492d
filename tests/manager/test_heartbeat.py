"""Heartbeat application: the pure triage (which kernels need a write) and the handler against a real database."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa

from common.protocol import KernelReport
from common.signing import SignedClient
from common.status import AgentStatus, KernelStatus, RouteHealth, RouteLifecycle, RouteTraffic, UserRole
from common.store import MemoryStore
from manager.bootstrap import create_user
from manager.context import CTX
from manager.control.agent_beats import AgentBeats
from manager.control.heartbeat import Grace, SessionRow, triage
from manager.db.models import Agent, Endpoint, Route, Session
from manager.server import build_manager_app
from tests.manager.inprocess import manager_config, serving
from tests.services import free_port

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
GRACE = Grace(answered=timedelta(seconds=10), unanswered=timedelta(seconds=40), stats_interval=5.0)
AGENT = "agent-1"


def row(kernel_id: uuid.UUID, **changes: Any) -> SessionRow:
    """A running, healthy session on AGENT whose state matches ``report(kernel_id)``."""
    values: dict[str, Any] = dict(
        id=kernel_id, agent_id=AGENT, status="running", host="127.0.0.1", port=9000, handle="42", allocation=None,
        stats=None, created_at=NOW - timedelta(minutes=5), terminated_at=None, lifecycle=RouteLifecycle.RUNNING,
        health=RouteHealth.HEALTHY, traffic=RouteTraffic.ACTIVE)
    return SessionRow(**{**values, **changes})


def report(kernel_id: uuid.UUID, **changes: Any) -> KernelReport:
    values: dict[str, Any] = dict(kernel_id=kernel_id, endpoint_id=uuid.uuid4(), route_id=uuid.uuid4(),
                                  status=KernelStatus.RUNNING, health=RouteHealth.HEALTHY, host="127.0.0.1",
                                  port=9000, handle="42")
    return KernelReport(**{**values, **changes})


def test_an_unchanged_beat_needs_no_write() -> None:
    ids = [uuid.uuid4() for _ in range(3)]
    found = triage(AGENT, {k: report(k) for k in ids}, [row(k) for k in ids], NOW, GRACE)
    assert found.work == set() and found.destroy == []


@pytest.mark.parametrize("row_changes, report_changes", [
    ({}, {"health": RouteHealth.UNHEALTHY}),  # the route leaves rotation
    ({"status": "starting", "lifecycle": RouteLifecycle.PROVISIONING, "health": RouteHealth.NOT_CHECKED}, {}),
    ({"port": None}, {}),  # the start call's answer was lost: the beat fills it in
    ({}, {"allocation": {"cuda.shares:GPU-0": "0.5"}}),
    ({}, {"stats": {"cpu_util": 50.0}}),  # no sample stored yet
    ({"stats": {"cpu_util": 10.0, "reported_at": NOW.timestamp() - 6}}, {"stats": {"cpu_util": 50.0}}),
    ({}, {"status": KernelStatus.EXITED}),
])
def test_a_changed_kernel_is_picked(row_changes: dict[str, Any], report_changes: dict[str, Any]) -> None:
    kernel = uuid.uuid4()
    found = triage(AGENT, {kernel: report(kernel, **report_changes)}, [row(kernel, **row_changes)], NOW, GRACE)
    assert found.work == {kernel} and found.destroy == []


def test_fresh_stats_are_not_rewritten_on_every_beat() -> None:
    kernel = uuid.uuid4()
    stored = {"cpu_util": 10.0, "reported_at": NOW.timestamp() - 2}
    found = triage(AGENT, {kernel: report(kernel, stats={"cpu_util": 50.0})}, [row(kernel, stats=stored)], NOW,
                   GRACE)
    assert found.work == set()


def test_orphans_are_destroyed_unless_already_stopped() -> None:
    unknown, given_up, routeless, stopped = (uuid.uuid4() for _ in range(4))
    reported = {unknown: report(unknown), given_up: report(given_up), routeless: report(routeless),
                stopped: report(stopped, status=KernelStatus.EXITED)}
    rows = [row(given_up, status="terminated"),
            row(routeless, lifecycle=None, health=None, traffic=None)]
    found = triage(AGENT, reported, rows, NOW, GRACE)
    assert sorted(found.destroy) == sorted([unknown, given_up, routeless]) and found.work == set()


def test_a_kernel_the_agent_stopped_listing_vanishes_after_its_grace() -> None:
    old, young, unanswered, elsewhere = (uuid.uuid4() for _ in range(4))
    rows = [row(old, created_at=NOW - timedelta(seconds=11)),
            row(young, created_at=NOW - timedelta(seconds=9)),
            row(unanswered, port=None, status="starting", created_at=NOW - timedelta(seconds=30)),
            row(elsewhere, agent_id="agent-2", created_at=NOW - timedelta(hours=1))]
    found = triage(AGENT, {}, rows, NOW, GRACE)
    assert found.work == {old}


def test_an_agent_row_is_trusted_for_half_the_heartbeat_timeout() -> None:
    beats = AgentBeats(db=None, heartbeat_timeout=0.2)
    reported = {"rpc_url": "http://127.0.0.1:9"}
    assert not beats.unchanged("a", reported)  # never read: the handler reads the row
    beats.confirm("a", reported)
    assert beats.unchanged("a", reported)
    assert not beats.unchanged("a", {"rpc_url": "http://127.0.0.1:10"})  # a changed report is written
    time.sleep(0.11)
    assert not beats.unchanged("a", reported)  # read again: the leader may have marked it lost meanwhile


# -- the handler against a real database (SQLite via the in-process manager) --------------------------------------

CLUSTER_SECRET = "c" * 32


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    port = free_port()
    config = manager_config(tmp_path, port, reconcile={"interval": 60, "kernel_report_grace": 0.5,
                                                       "rpc_timeout": 1})
    async with serving(build_manager_app(config, MemoryStore()), port) as app, aiohttp.ClientSession() as http:
        yield {"app": app, "url": f"http://127.0.0.1:{port}", "client": SignedClient(http, CLUSTER_SECRET)}


async def seed_replica(app: Any, agent_id: str) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """An endpoint with one route whose session runs on ``agent_id``, as the scheduler would have left it."""
    user_id, _, _ = await create_user(app[CTX].db, "hb@example.com", UserRole.USER, box=app[CTX].keypair_box)
    async with app[CTX].db() as db:
        endpoint = Endpoint(id=uuid.uuid4(), name="hb", owner_id=user_id, created_user_id=user_id, replicas=1)
        db.add(endpoint)
        await db.flush()
        route = Route(id=uuid.uuid4(), endpoint_id=endpoint.id, lifecycle=RouteLifecycle.PROVISIONING,
                      health=RouteHealth.NOT_CHECKED, traffic=RouteTraffic.ACTIVE, traffic_ratio=1.0)
        session = Session(id=uuid.uuid4(), endpoint_id=endpoint.id, route_id=route.id, agent_id=agent_id,
                          status="starting", status_history=[], port=9000, host="127.0.0.1")
        db.add_all([route, session])
        await db.flush()
        route.session_id = session.id
        await db.commit()
        return endpoint.id, route.id, session.id


def beat(agent_id: str, kernels: list[dict[str, Any]], rpc_url: str = "http://127.0.0.1:9") -> dict[str, Any]:
    return {"agent_id": agent_id, "rpc_url": rpc_url, "replica_host": "127.0.0.1",
            "available_slots": {"cpu": "4", "mem": "8g"}, "kernels": kernels}


async def statements_during(app: Any, call: Any) -> list[str]:
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(" ".join(statement.split()))

    engine = app[CTX].engine.sync_engine
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        await call()
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    return seen


async def test_heartbeats_move_routes_and_unchanged_beats_only_touch_last_heartbeat(
        manager: dict[str, Any]) -> None:
    app, client, url = manager["app"], manager["client"], manager["url"]
    await client.call("POST", url, "/internal/heartbeat", beat("hb-agent", []))  # registers
    endpoint_id, route_id, session_id = await seed_replica(app, "hb-agent")
    kernel = {"kernel_id": str(session_id), "endpoint_id": str(endpoint_id), "route_id": str(route_id),
              "status": "running", "health": "healthy", "host": "127.0.0.1", "port": 9000}
    reply = await client.call("POST", url, "/internal/heartbeat", beat("hb-agent", [kernel]))
    assert reply == {"ok": True, "destroy": []}
    async with app[CTX].db() as db:
        route, session = await db.get(Route, route_id), await db.get(Session, session_id)
        assert route is not None and session is not None
        assert (route.lifecycle, route.health) == (RouteLifecycle.RUNNING, RouteHealth.HEALTHY)
        assert session.status == "running" and [h["status"] for h in session.status_history] == ["running"]
        first = (await db.get(Agent, "hb-agent")).last_heartbeat

    async def same_beat() -> None:
        reply = await client.call("POST", url, "/internal/heartbeat", beat("hb-agent", [kernel]))
        assert reply == {"ok": True, "destroy": []}

    # one read of the agent's sessions; the agent row is neither read nor written (the engine is shared with
    # the manager's loop, so statements of its own are filtered out by what they touch)
    statements = await statements_during(app, same_beat)
    assert sum(s.startswith("SELECT sessions.id") for s in statements) == 1, statements
    # (the loop's own route reads join agents: only statements on the agents table itself count here)
    assert not [s for s in statements if s.startswith(("SELECT agents.", "UPDATE agents ", "INSERT INTO agents "))
                ], statements
    deadline = time.monotonic() + 5  # the beat time is written with the next batch (every FLUSH_INTERVAL)
    while True:
        async with app[CTX].db() as db:
            agent = await db.get(Agent, "hb-agent")
            assert agent is not None and agent.status == AgentStatus.ALIVE
            if agent.last_heartbeat > first:
                break
        assert time.monotonic() < deadline, "the queued beat time was never written"
        await asyncio.sleep(0.1)

    # marked lost by the leader while this manager trusted its row: the next flush notices, a later beat revives it
    async with app[CTX].db() as db:
        await db.execute(sa.update(Agent).where(Agent.id == "hb-agent").values(status=AgentStatus.LOST))
        await db.commit()
    deadline = time.monotonic() + 5
    while True:
        await same_beat()
        async with app[CTX].db() as db:
            if (await db.get(Agent, "hb-agent")).status == AgentStatus.ALIVE:
                break
        assert time.monotonic() < deadline, "the agent stayed lost although it kept beating"
        await asyncio.sleep(0.3)

    # what the agent reports about itself is written when it changes (here: its RPC URL)
    await client.call("POST", url, "/internal/heartbeat", beat("hb-agent", [kernel], rpc_url="http://127.0.0.1:10"))
    async with app[CTX].db() as db:
        assert (await db.get(Agent, "hb-agent")).rpc_url == "http://127.0.0.1:10"

    # an unknown kernel is an orphan; the replica the agent stopped listing is lost after the grace
    stray = {**kernel, "kernel_id": str(uuid.uuid4())}
    async with app[CTX].db() as db:
        await db.execute(sa.update(Session).where(Session.id == session_id).values(
            created_at=datetime.now(UTC) - timedelta(seconds=5)))
        await db.commit()
    reply = await client.call("POST", url, "/internal/heartbeat", beat("hb-agent", [stray],
                                                                        rpc_url="http://127.0.0.1:10"))
    assert reply == {"ok": True, "destroy": [stray["kernel_id"]]}
    async with app[CTX].db() as db:
        route, session = await db.get(Route, route_id), await db.get(Session, session_id)
        assert session is not None and session.status == "lost"
        assert route is not None and route.lifecycle == RouteLifecycle.TERMINATED
        assert route.error_data is not None and route.error_data["type"] == "replica_vanished"
