"""Per-service security settings end to end, in-process against real databases (docs/security.md):
``cors_allowed_origins`` (validated, stored, published in the route table), ``network_outbound`` (validated,
stored, carried in the KernelSpec the agent gets, a new revision when it changes) and each route's
``sandboxed`` (false on an agent that reports the ``local-nosandbox`` runtime)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from appproxy.cors import normalise_origin
from common.protocol import MAX_CORS_ORIGINS, MAX_ORIGIN_LENGTH, KernelSpec, RouteTable
from common.signing import SignedClient, read_signed_json, signed_request_middleware
from common.status import AgentStatus, RouteHealth, RouteLifecycle, RouteTraffic
from common.store import ROUTES_PREFIX
from manager.cli.service import print_service_info
from manager.context import CTX
from manager.db.models import Agent, Route, Session
from tests.manager.apiclient import APIClient
from tests.manager.inprocess import serving
from tests.manager.test_api import ECHO_DEF, _create_body, _folder_with, manager  # noqa: F401 - fixture
from tests.security.api_harness import create_body, make_folder, running_manager
from tests.services import free_port

CLUSTER_SECRET = "c" * 32  # tests/manager/inprocess.py's secrets.cluster_secret


async def _published(store: Any, endpoint_id: str, want: Any, timeout: float = 10.0) -> dict[str, Any]:
    """The endpoint's route table once its ``cors_allowed_origins`` is ``want`` (the loop publishes soon)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        raw = await store.get(ROUTES_PREFIX + endpoint_id)
        table = json.loads(raw) if raw else None
        if table is not None and table.get("cors_allowed_origins") == want:
            RouteTable.model_validate(table)  # what the app proxy parses
            return table
        assert asyncio.get_running_loop().time() < deadline, table
        await asyncio.sleep(0.05)


def _names(field: str, problem: Any) -> bool:
    return isinstance(problem, dict) and field in problem.get("detail", "") + problem.get("title", "")


# -- cors_allowed_origins ------------------------------------------------------------------------------------------

BAD_ORIGINS: list[Any] = [
    ["ftp://files.example.com"], ["https://chat.example.com/path"], ["null"], [""], ["chat.example.com"],
    ["https://"], ["https://chat.example.com:99999"], ["https://user@chat.example.com"], ["*.example.com"],
    ["https://chat.example.com?x=1"], [3], [None], "https://chat.example.com", {"origin": "https://a.example"},
    None, ["https://" + "a" * MAX_ORIGIN_LENGTH + ".example.com"],
    [f"https://h{i}.example.com" for i in range(MAX_CORS_ORIGINS + 1)],
]


async def test_cors_origins_are_stored_published_and_patched(manager: dict) -> None:  # noqa: F811
    alice: APIClient = manager["alice"]
    store = manager["store"]
    await _folder_with(alice, "echo", {"model-definition.yaml": ECHO_DEF})

    status, plain = await alice.request("POST", "/services", _create_body("echo", name="plain-svc"))
    assert status == 201 and plain["cors_allowed_origins"] == [], plain
    await _published(store, plain["endpoint_id"], [])

    origins = ["https://Chat.Example.com/", "http://localhost:3000", "http://[::1]:8080", "https://chat.example.com"]
    status, info = await alice.request("POST", "/services",
                                       _create_body("echo", name="cors-svc", cors_allowed_origins=origins))
    assert status == 201, info
    eid = info["endpoint_id"]
    # normalised as browsers send them (and as the app proxy compares them), duplicates dropped
    want = ["https://chat.example.com", "http://localhost:3000", "http://[::1]:8080"]
    assert info["cors_allowed_origins"] == want
    assert [normalise_origin(o) for o in want] == want, "the app proxy accepts each one as it is"
    table = await _published(store, eid, want)
    assert table["open_to_public"] is False
    status, got = await alice.request("GET", f"/services/{eid}")
    assert status == 200 and got["cors_allowed_origins"] == want

    status, info = await alice.request("PATCH", f"/services/{eid}", {"cors_allowed_origins": ["*"]})
    assert status == 200 and info["cors_allowed_origins"] == ["*"], info
    assert info["revision"] == 1 and info["changed"] == [], "not what a replica runs: no rolling update"
    await _published(store, eid, ["*"])
    status, info = await alice.request("PATCH", f"/services/{eid}", {"replicas": 0})
    assert status == 200 and info["cors_allowed_origins"] == ["*"], "fields left out keep their value"
    status, info = await alice.request("PATCH", f"/services/{eid}", {"cors_allowed_origins": []})
    assert status == 200 and info["cors_allowed_origins"] == []
    await _published(store, eid, [])

    status, info = await alice.request("PATCH", f"/services/{eid}",
                                       {"cors_allowed_origins": [f"https://h{i}.example.com"
                                                                 for i in range(MAX_CORS_ORIGINS)]})
    assert status == 200 and len(info["cors_allowed_origins"]) == MAX_CORS_ORIGINS, "the limit itself is fine"

    for bad in BAD_ORIGINS:
        status, problem = await alice.request("POST", "/services",
                                              _create_body("echo", name="bad-svc", cors_allowed_origins=bad))
        assert status == 400 and _names("cors_allowed_origins", problem), (bad, status, problem)
        status, problem = await alice.request("PATCH", f"/services/{eid}", {"cors_allowed_origins": bad})
        if bad is None:  # PATCH: null is "leave it as it is", like every other field
            assert status == 200, problem
            continue
        assert status == 400 and _names("cors_allowed_origins", problem), (bad, status, problem)
    status, listed = await alice.request("GET", "/services?name=bad-svc")
    assert status == 200 and listed == []
    assert len((await alice.request("GET", f"/services/{eid}"))[1]["cors_allowed_origins"]) == MAX_CORS_ORIGINS


# -- network_outbound ----------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def recording_agent() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """An agent's RPC endpoint that checks the manager's signature and records every KernelSpec it is sent; the
    replica it reports never becomes healthy (nothing runs)."""
    specs: list[dict[str, Any]] = []

    async def create_kernel(request: web.Request) -> web.Response:
        spec = await read_signed_json(request)
        specs.append(spec)
        return web.json_response({"kernel_id": spec["kernel_id"], "endpoint_id": spec["endpoint_id"],
                                  "route_id": spec["route_id"], "status": "starting", "host": "127.0.0.1",
                                  "port": 9})

    app = web.Application(middlewares=[signed_request_middleware(CLUSTER_SECRET, "/rpc")])
    app.router.add_post("/rpc/kernels", create_kernel)
    port = free_port()
    async with serving(app, port):
        yield f"http://127.0.0.1:{port}", specs


async def _spec_for(specs: list[dict[str, Any]], endpoint_id: str, count: int) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        mine = [s for s in specs if s["endpoint_id"] == endpoint_id]
        if len(mine) >= count:
            return mine[count - 1]
        assert asyncio.get_running_loop().time() < deadline, specs
        await asyncio.sleep(0.05)


async def test_network_outbound_reaches_the_agent_and_a_change_rolls_the_replicas(manager: dict) -> None:  # noqa: F811
    alice: APIClient = manager["alice"]
    url = manager["url"]
    await _folder_with(alice, "echo", {"model-definition.yaml": ECHO_DEF})
    async with recording_agent() as (agent_url, specs):
        beat = {"agent_id": "spec-agent", "rpc_url": agent_url, "replica_host": "127.0.0.1",
                "available_slots": {"cpu": "8", "mem": "16g"}, "kernels": []}
        await SignedClient(manager["session"], CLUSTER_SECRET).call("POST", url, "/internal/heartbeat", beat)

        status, closed = await alice.request("POST", "/services", _create_body("echo", name="closed-svc"))
        assert status == 201 and closed["network_outbound"] is False, closed
        status, info = await alice.request("POST", "/services",
                                           _create_body("echo", name="open-svc", network_outbound=True))
        assert status == 201 and info["network_outbound"] is True, info
        eid = info["endpoint_id"]

        spec = await _spec_for(specs, closed["endpoint_id"], 1)
        assert spec["network_outbound"] is False
        spec = await _spec_for(specs, eid, 1)
        assert spec["network_outbound"] is True
        assert KernelSpec.model_validate(spec).network_outbound is True

        status, info = await alice.request("PATCH", f"/services/{eid}", {"network_outbound": True})
        assert status == 200 and info["revision"] == 1 and info["changed"] == [], "no change, no new revision"
        status, info = await alice.request("PATCH", f"/services/{eid}", {"network_outbound": False})
        assert status == 200 and info["network_outbound"] is False
        assert info["revision"] == 2 and info["changed"] == ["network_outbound"], info
        spec = await _spec_for(specs, eid, 2)  # the rolling update starts a replica of the new revision
        assert spec["network_outbound"] is False and spec["route_id"] != (await _spec_for(specs, eid, 1))["route_id"]
        status, got = await alice.request("GET", f"/services/{eid}")
        assert got["network_outbound"] is False and got["revision"] == 2

    for bad in ("true", 1, 0, "yes", [], {}):
        status, problem = await alice.request("POST", "/services",
                                              _create_body("echo", name="bad-svc", network_outbound=bad))
        assert status == 400 and _names("network_outbound", problem), (bad, status, problem)
        status, problem = await alice.request("PATCH", f"/services/{eid}", {"network_outbound": bad})
        assert status == 400 and _names("network_outbound", problem), (bad, status, problem)


def test_an_older_agent_still_parses_specs_and_a_spec_without_the_field_means_no_outbound() -> None:
    base = {"kernel_id": str(uuid.uuid4()), "endpoint_id": str(uuid.uuid4()), "route_id": str(uuid.uuid4()),
            "endpoint_name": "e", "folder_relpath": "u/f", "model_definition": {"models": []}}
    assert KernelSpec.model_validate(base).network_outbound is False  # from a manager that predates the field
    assert KernelSpec.model_validate({**base, "network_outbound": True}).network_outbound is True
    assert KernelSpec.model_config.get("extra") == "ignore", "older agents must ignore the new field"


# -- PostgreSQL: the same settings through the JSONB and boolean columns -------------------------------------------


async def test_service_settings_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    async with running_manager(tmp_path, db_url=pg_url) as m:
        await make_folder(m.alice, "echo")
        status, info = await m.alice.request("POST", "/services", create_body(
            "echo", cors_allowed_origins=["https://chat.example.com"], network_outbound=True))
        assert status == 201, info
        eid = info["endpoint_id"]
        await _published(m.app[CTX].store, eid, ["https://chat.example.com"])
        status, info = await m.alice.request("PATCH", f"/services/{eid}", {
            "cors_allowed_origins": ["http://localhost:3000", "*"], "network_outbound": False})
        assert status == 200 and info["changed"] == ["network_outbound"], info
        await _published(m.app[CTX].store, eid, ["http://localhost:3000", "*"])
        status, info = await m.alice.request("GET", f"/services/{eid}")
        assert (info["cors_allowed_origins"], info["network_outbound"]) == (["http://localhost:3000", "*"], False)


# -- sandboxed -----------------------------------------------------------------------------------------------------


@pytest.fixture
async def quiet_manager(tmp_path: Path) -> AsyncIterator[Any]:
    """A manager whose control loop stays out of the way (it ticks once a minute) while a test seeds rows."""
    async with running_manager(tmp_path, reconcile={"interval": 60}) as m:
        yield m


async def test_routes_on_an_unsandboxed_agent_say_so(quiet_manager: Any, capsys: pytest.CaptureFixture) -> None:
    m = quiet_manager
    await make_folder(m.alice, "echo")
    # no replicas wanted: the control loop (woken by the create) places nothing on the agents seeded below
    status, info = await m.alice.request("POST", "/services", create_body("echo", replicas=0))
    assert status == 201, info
    eid = uuid.UUID(info["endpoint_id"])
    route_ids = {}
    async with m.app[CTX].db() as db:
        for agent_id, runtime in (("boxed", "local"), ("open", "local-nosandbox"), ("docked", "docker")):
            db.add(Agent(id=agent_id, rpc_url="http://127.0.0.1:9", replica_host="127.0.0.1", runtime=runtime,
                         status=AgentStatus.ALIVE))
        await db.flush()
        for agent_id in ("boxed", "open", "docked", None):
            route = Route(id=uuid.uuid4(), endpoint_id=eid, lifecycle=RouteLifecycle.RUNNING,
                          health=RouteHealth.HEALTHY, traffic=RouteTraffic.ACTIVE, traffic_ratio=1.0)
            db.add(route)
            route_ids[agent_id] = str(route.id)
            if agent_id is None:  # not placed yet: no session, nothing runs anywhere
                route.lifecycle = RouteLifecycle.PROVISIONING
                continue
            session = Session(id=uuid.uuid4(), endpoint_id=eid, route_id=route.id, agent_id=agent_id,
                              status="running", host="127.0.0.1", port=9000)
            db.add(session)
            await db.flush()
            route.session_id = session.id
        await db.commit()

    status, info = await m.alice.request("GET", f"/services/{eid}")
    assert status == 200, info
    sandboxed = {r["route_id"]: r["sandboxed"] for r in info["routes"]}
    assert sandboxed == {route_ids["boxed"]: True, route_ids["open"]: False, route_ids["docked"]: True,
                         route_ids[None]: True}
    active = {r["route_id"]: r["sandboxed"] for r in info["active_routes"]}  # the Backend.AI-shaped list
    assert active == {route_ids["boxed"]: True, route_ids["open"]: False, route_ids["docked"]: True}
    status, patched = await m.alice.request("PATCH", f"/services/{eid}", {"max_surge": 2})
    assert status == 200 and {r["route_id"]: r["sandboxed"] for r in patched["routes"]} == sandboxed

    # the CLI's human output, from what the real manager answered
    capsys.readouterr()
    print_service_info(info)
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and route_ids["open"] in warnings[0] and "sandbox" in warnings[0], out
    assert route_ids["boxed"] not in warnings[0]


def test_the_unsandboxed_runtime_name_is_the_agents() -> None:
    from agent.server import UNSANDBOXED_RUNTIME as AGENT_SIDE
    from common.protocol import UNSANDBOXED_RUNTIME

    assert UNSANDBOXED_RUNTIME == AGENT_SIDE == "local-nosandbox"


# -- OpenAPI -------------------------------------------------------------------------------------------------------


def test_openapi_documents_the_settings() -> None:
    from manager.api.openapi import build_spec

    schemas = build_spec()["components"]["schemas"]
    for model in ("NewServiceRequest", "UpdateServiceRequest", "ServeInfo"):
        props = schemas[model]["properties"]
        assert {"cors_allowed_origins", "network_outbound"} <= set(props), model
        assert props["cors_allowed_origins"].get("description") or model == "ServeInfo"
    create = schemas["NewServiceRequest"]["properties"]
    assert create["network_outbound"]["type"] == "boolean" and create["network_outbound"]["default"] is False
    assert create["cors_allowed_origins"]["maxItems"] == MAX_CORS_ORIGINS
    assert "sandboxed" in schemas["RouteInfo"]["properties"] and "sandboxed" in schemas["ActiveRoute"]["properties"]

