"""The autoscaler inside a real manager (SQLite, in-memory store, the real control loop): rules fed by a signed
fake app-proxy admin API and by agent heartbeats, scale from zero through demand keys, the decisions API."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from aiohttp import web

from common.protocol import DEMAND_PREFIX, PROXIES_PREFIX, DemandSignal, ProxyRegistration
from common.signing import SignedClient, signed_request_middleware
from common.status import RouteLifecycle, UserRole
from common.store import MemoryStore
from manager.bootstrap import create_user
from manager.context import CTX
from manager.db.models import Endpoint, Event, Route, Session
from manager.server import build_manager_app
from tests.manager.apiclient import APIClient
from tests.manager.inprocess import manager_config, serving
from tests.manager.test_api import ECHO_DEF
from tests.services import free_port

CLUSTER_SECRET = "c" * 32
CREATE_RULE = """mutation($endpoint: String!, $props: EndpointAutoScalingRuleInput!) {
  create_endpoint_auto_scaling_rule_node(endpoint: $endpoint, props: $props) { ok rule { row_id } } }"""


class FakeProxyAdmin:
    """A proxy admin API: verifies the cluster signature like appproxy.admin, answers with :attr:`rps`."""

    def __init__(self) -> None:
        self.rps = 0.0
        self.in_flight = 0
        self.calls = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def metrics(self, request: web.Request) -> web.Response:
        self.calls += 1
        return web.json_response({"endpoint_id": request.match_info["endpoint_id"], "collected_at": time.time(),
                                  "replicas": 0, "metrics": {},
                                  "proxy": {"rps": self.rps, "in_flight": self.in_flight}})

    async def start(self) -> None:
        app = web.Application(middlewares=[signed_request_middleware(CLUSTER_SECRET)])
        app.router.add_get("/endpoints/{endpoint_id}/metrics", self.metrics)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]  # started site


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    port = free_port()
    config = manager_config(
        tmp_path, port, secrets={"cluster_secret": CLUSTER_SECRET, "jwt_secret": "j" * 32,
                                  "keypair_encryption_key": "k" * 32},
        reconcile={"interval": 0.2},
        autoscale={"evaluation_interval": 0.2, "demand_window": 2.0, "blocked_event_interval": 30})
    store = MemoryStore()
    async with serving(build_manager_app(config, store), port) as app:
        db = app[CTX].db
        _, ak1, sk1 = await create_user(db, "alice@example.com", UserRole.USER, box=app[CTX].keypair_box)
        _, ak2, sk2 = await create_user(db, "bob@example.com", UserRole.USER, box=app[CTX].keypair_box)
        proxy = FakeProxyAdmin()
        await proxy.start()
        await store.put(PROXIES_PREFIX + "fake",
                        ProxyRegistration(proxy_id="fake", admin_url=proxy.url).model_dump_json())
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}"
            yield {"url": url, "alice": APIClient(session, url, ak1, sk1),
                   "bob": APIClient(session, url, ak2, sk2), "session": session, "app": app, "store": store,
                   "proxy": proxy}
        assert proxy.runner is not None
        await proxy.runner.cleanup()


async def create_service(client: APIClient, name: str, replicas: int) -> str:
    status, body = await client.request("POST", "/folders", {"name": f"f-{name}"})
    assert status == 201, body
    form = aiohttp.FormData()
    form.add_field("file", ECHO_DEF.encode(), filename="model-definition.yaml", content_type="text/plain")
    status, body = await client.request("POST", f"/folders/f-{name}/files", data=form,
                                        content_type="multipart/form-data")
    assert status == 201, body
    status, info = await client.request("POST", "/services", {
        "name": name, "replicas": replicas, "config": {"model": f"f-{name}", "resources": {"cpu": "0.1",
                                                                                         "mem": "64m"}}})
    assert status == 201, info
    return info["endpoint_id"]


async def add_rule(client: APIClient, endpoint_id: str, **props: Any) -> str:
    props = {"cooldown_seconds": 1, **props, "threshold": str(props["threshold"])}
    status, body = await client.request("POST", "/admin/gql", {"query": CREATE_RULE, "variables": {
        "endpoint": endpoint_id, "props": props}})
    assert status == 200 and not body.get("errors"), body
    return body["data"]["create_endpoint_auto_scaling_rule_node"]["rule"]["row_id"]


async def replicas(app: web.Application, endpoint_id: str) -> int:
    async with app[CTX].db() as db:
        endpoint = await db.get(Endpoint, uuid.UUID(endpoint_id))
        assert endpoint is not None
        return endpoint.replicas


async def wait_replicas(app: web.Application, endpoint_id: str, want: int, timeout: float = 15.0) -> float:
    started = time.monotonic()
    while (await replicas(app, endpoint_id)) != want:
        assert time.monotonic() - started < timeout, f"replicas never reached {want}"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def decisions(client: APIClient, endpoint_id: str, query: str = "") -> list[dict[str, Any]]:
    status, body = await client.request("GET", f"/services/{endpoint_id}/autoscaling-decisions{query}")
    assert status == 200, body
    return body["decisions"]


async def test_proxy_rules_scale_out_and_in_with_cooldown(manager: dict[str, Any]) -> None:
    alice, app, proxy = manager["alice"], manager["app"], manager["proxy"]
    eid = await create_service(alice, "auto-svc", 1)
    up = await add_rule(alice, eid, metric_source="PROXY", metric_name="rps", comparator="GREATER_THAN",
                        threshold=5, step_size=1, max_replicas=3, cooldown_seconds=1)
    down = await add_rule(alice, eid, metric_source="proxy", metric_name="rps", comparator="less_than",
                          threshold=1, step_size=-1, min_replicas=1, cooldown_seconds=1)
    proxy.rps = 2.5  # between the thresholds: nothing fires
    await asyncio.sleep(1.0)
    assert await replicas(app, eid) == 1 and proxy.calls > 0
    proxy.rps = 40.0
    await wait_replicas(app, eid, 3)
    await asyncio.sleep(1.5)
    assert await replicas(app, eid) == 3  # clamped at max_replicas, not beyond
    proxy.rps = 0.0
    await wait_replicas(app, eid, 1)
    await asyncio.sleep(1.5)
    assert await replicas(app, eid) == 1  # at min_replicas

    applied = await decisions(alice, eid, "?applied_only=true")
    assert [(d["old_replicas"], d["new_replicas"]) for d in applied] == [(2, 1), (3, 2), (2, 3), (1, 2)]
    assert [d["rule_id"] for d in applied] == [down, down, up, up]
    first = applied[-1]
    assert first["metric_source"] == "proxy" and first["metric_name"] == "rps" and first["observed"] == 40.0
    assert first["threshold"] == 5.0 and first["outcome"] == "scale" and first["applied"] is True
    assert "rps = 40 > 5" in first["reason"]
    stamps = [datetime.fromisoformat(d["created_at"]) for d in reversed(applied)]
    gaps = [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:], strict=False)]
    assert all(g >= 0.95 for g in gaps), gaps  # each change waited for the 1 s cooldown
    every = await decisions(alice, eid)
    blocked = {d["outcome"] for d in every if not d["applied"]}
    assert "at_bound" in blocked and blocked <= {"at_bound", "cooldown"}
    assert len([d for d in every if d["outcome"] == "at_bound" and d["rule_id"] == up]) == 1  # rate-limited
    assert len(await decisions(alice, eid, "?limit=2")) == 2
    async with app[CTX].db() as db:
        count = (await db.execute(sa.select(sa.func.count()).select_from(Event).where(
            Event.endpoint_id == uuid.UUID(eid), Event.kind == "autoscaling_decision"))).scalar_one()
    assert count == len(every)

    # ownership like every /services/{id} route, and named bad parameters
    status, _ = await manager["bob"].request("GET", f"/services/{eid}/autoscaling-decisions")
    assert status == 404
    status, body = await alice.request("GET", f"/services/{eid}/autoscaling-decisions?limit=0")
    assert status == 400 and body["detail"].startswith("limit:")
    status, body = await alice.request("GET", "/services/nope/autoscaling-decisions")
    assert status == 400 and "service_id" in body["detail"]
    async with manager["session"].get(manager["url"] + "/openapi.json") as resp:
        spec = await resp.json()
    assert "/services/{service_id}/autoscaling-decisions" in spec["paths"]


async def test_a_user_scale_wins_over_a_concurrent_decision(manager: dict[str, Any]) -> None:
    alice, app, proxy = manager["alice"], manager["app"], manager["proxy"]
    eid = await create_service(alice, "mine-svc", 2)
    await add_rule(alice, eid, metric_source="proxy", metric_name="rps", comparator="greater_than", threshold=5,
                   step_size=1, max_replicas=10, cooldown_seconds=3600, enabled=False)
    proxy.rps = 100.0
    await asyncio.sleep(0.8)
    assert await replicas(app, eid) == 2  # disabled rules do nothing
    status, _ = await alice.request("POST", f"/services/{eid}/scale", {"to": 0})
    assert status == 200
    await asyncio.sleep(0.5)
    assert await replicas(app, eid) == 0 and await decisions(alice, eid) == []


async def test_kernel_stats_from_heartbeats_drive_kernel_rules(manager: dict[str, Any]) -> None:
    alice, app = manager["alice"], manager["app"]
    eid = await create_service(alice, "cpu-svc", 1)
    async with app[CTX].db() as db:  # the replica an agent would be running
        route = (await db.execute(sa.select(Route).where(Route.endpoint_id == uuid.UUID(eid)))).scalars().first()
        while route is None:
            await asyncio.sleep(0.05)
            route = (await db.execute(sa.select(Route).where(Route.endpoint_id == uuid.UUID(eid)))).scalars().first()
        session = Session(id=uuid.uuid4(), endpoint_id=uuid.UUID(eid), route_id=route.id, agent_id=None,
                          status="starting")
        db.add(session)
        await db.flush()
        route.session_id = session.id
        await db.commit()
        session_id, route_id = session.id, route.id
    await add_rule(alice, eid, metric_source="KERNEL", metric_name="cpu_util", comparator="GREATER_THAN",
                   threshold=80, step_size=1, max_replicas=2)
    heartbeat = {"agent_id": "stats-agent", "rpc_url": "http://127.0.0.1:9", "replica_host": "127.0.0.1",
                 "available_slots": {}, "kernels": [{
                     "kernel_id": str(session_id), "endpoint_id": eid, "route_id": str(route_id),
                     "status": "running", "health": "healthy", "host": "127.0.0.1", "port": 9,
                     "stats": {"cpu_util": 97.5, "mem_util": 12.0, "mem_bytes": 1e6, "collected_at": time.time()}}]}
    client = SignedClient(manager["session"], CLUSTER_SECRET)
    await client.call("POST", manager["url"], "/internal/heartbeat", heartbeat)
    async with app[CTX].db() as db:
        stored = await db.get(Session, session_id)
        assert stored is not None and stored.status == "running"
        assert stored.stats is not None and stored.stats["cpu_util"] == 97.5
        assert abs(stored.stats["reported_at"] - time.time()) < 10
    await wait_replicas(app, eid, 2)
    applied = await decisions(alice, eid, "?applied_only=true")
    assert applied[0]["metric_source"] == "kernel" and applied[0]["observed"] == 97.5


async def test_scale_from_zero_on_demand(manager: dict[str, Any]) -> None:
    alice, app, store = manager["alice"], manager["app"], manager["store"]
    eid = await create_service(alice, "cold-svc", 0)  # a service may start at zero replicas
    plain = await create_service(alice, "plain-svc", 0)
    await add_rule(alice, eid, metric_source="proxy", metric_name="rps", comparator="less_than", threshold=0.1,
                   step_size=-1, min_replicas=0, max_replicas=4, cooldown_seconds=1)
    await asyncio.sleep(0.5)
    assert await replicas(app, eid) == 0
    for endpoint in (eid, plain):
        signal = DemandSignal(endpoint_id=uuid.UUID(endpoint), at=time.time(), held=2, proxy_id="fake")
        await store.put(DEMAND_PREFIX + endpoint, signal.model_dump_json())
    elapsed = await wait_replicas(app, eid, 1, timeout=5)
    assert elapsed < 1.5, f"woke after {elapsed:.2f}s"  # the watch wakes the loop: no waiting for a tick
    # (the idle rule may already have recorded a newer "cooldown" decision: look the wake-up up by outcome)
    woken = [d for d in await decisions(alice, eid) if d["outcome"] == "scale_from_zero"]
    assert len(woken) == 1, await decisions(alice, eid)
    woke = woken[0]
    assert woke["applied"] and woke["old_replicas"] == 0
    assert woke["new_replicas"] == 1 and "2 request(s) waiting" in woke["reason"]
    assert await replicas(app, plain) == 0  # no autoscaling rule: demand alone does not wake it

    # requests are still waiting: the idle rule (rps 0 < 0.1, min 0) must not put it back to zero ...
    await asyncio.sleep(1.3)
    await store.put(DEMAND_PREFIX + eid, DemandSignal(endpoint_id=uuid.UUID(eid), at=time.time(), held=1)
                    .model_dump_json())
    await asyncio.sleep(0.5)
    assert await replicas(app, eid) == 1
    assert any(d["outcome"] == "demand" for d in await decisions(alice, eid))
    # ... once the demand is over (older than demand_window) it does, and the demand key is cleaned up
    await wait_replicas(app, eid, 0, timeout=10)
    assert DEMAND_PREFIX + eid not in await store.get_prefix(DEMAND_PREFIX)
    live = -1
    for _ in range(50):  # the reconciler drains the last route on its next tick
        async with app[CTX].db() as db:
            live = (await db.execute(sa.select(sa.func.count()).select_from(Route).where(
                Route.endpoint_id == uuid.UUID(eid), Route.lifecycle.in_([RouteLifecycle.PROVISIONING,
                                                                          RouteLifecycle.RUNNING])))).scalar_one()
        if live == 0:
            break
        await asyncio.sleep(0.1)
    assert live == 0
