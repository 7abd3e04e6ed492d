"""A service's gateway settings: ``route_capacity`` (the priority queue), ``model_aliases`` and ``engine_model_name``
(docs/gateway.md): validated, stored, published in the route table the app proxies read, patched and cleared; the
CLI sends them; migration 0010 adds and drops its columns and tables."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import sqlalchemy as sa

from common.protocol import RouteTable
from common.store import ROUTES_PREFIX
from manager.cli.service import build_create_body
from manager.cli.service_update import build_update_body
from manager.db import engine as db_engine
from tests.manager.apiclient import APIClient
from tests.manager.test_api import ECHO_DEF, _create_body, _folder_with, manager  # noqa: F401 - fixture


async def _published_capacity(store: Any, endpoint_id: str, want: int | None, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        raw = await store.get(ROUTES_PREFIX + endpoint_id)
        table = RouteTable.model_validate_json(raw) if raw else None
        if table is not None and table.route_capacity == want:
            return
        assert asyncio.get_running_loop().time() < deadline, table
        await asyncio.sleep(0.05)


async def test_route_capacity_is_stored_published_patched_and_cleared(manager: dict) -> None:  # noqa: F811
    alice: APIClient = manager["alice"]
    store = manager["store"]
    await _folder_with(alice, "echo", {"model-definition.yaml": ECHO_DEF})
    for bad in (0, -1, "4", 1.5, 100_001, True):
        status, problem = await alice.request("POST", "/services", _create_body("echo", name="bad-svc",
                                                                                route_capacity=bad))
        assert status == 400 and "route_capacity" in json.dumps(problem), (bad, status, problem)
    status, info = await alice.request("POST", "/services", _create_body("echo", name="cap-svc", route_capacity=2))
    assert status == 201 and info["route_capacity"] == 2, info
    eid = info["endpoint_id"]
    await _published_capacity(store, eid, 2)
    status, info = await alice.request("PATCH", f"/services/{eid}", {"route_capacity": 5})
    assert status == 200 and info["route_capacity"] == 5 and info["changed"] == [], info  # no rolling update
    await _published_capacity(store, eid, 5)
    status, info = await alice.request("PATCH", f"/services/{eid}", {"route_capacity": None})
    assert status == 200 and info["route_capacity"] is None
    await _published_capacity(store, eid, None)
    status, info = await alice.request("GET", f"/services/{eid}")
    assert status == 200 and info["route_capacity"] is None


def test_cli_sends_route_capacity() -> None:
    args = argparse.Namespace(model_folder="echo", env=None, scaling_group=None, resources=None,
                              model_definition_path=None, cors_origins=None, allow_outbound=False, route_capacity=4,
                              aliases=None, engine_model_name=None, name="x", count=1, image=None,
                              runtime_variant="custom", public=False)
    assert build_create_body(args)["route_capacity"] == 4
    args.route_capacity = None
    assert "route_capacity" not in build_create_body(args)  # Backend.AI's body, exactly
    update = argparse.Namespace(replicas=None, image=None, runtime_variant=None, model_definition_path=None,
                                max_surge=None, model_folder=None, env=None, clear_env=False, resources=None,
                                public=None, cors_origins=None, clear_cors_origins=False, outbound=None,
                                redeploy=False, route_capacity=0, aliases=None, clear_aliases=False,
                                engine_model_name=None)
    assert build_update_body(update) == {"route_capacity": None}


async def test_migration_0010_adds_and_drops_route_capacity(tmp_path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/m.db"
    await db_engine.upgrade(url)

    async def columns() -> set[str]:
        eng = db_engine.make_engine(url)
        try:
            async with eng.connect() as conn:
                found = await conn.run_sync(lambda c: sa.inspect(c).get_columns("endpoints"))
                return {c["name"] for c in found}
        finally:
            await eng.dispose()

    async def tables() -> tuple[set[str], set[str]]:
        eng = db_engine.make_engine(url)
        try:
            async with eng.connect() as conn:
                names = await conn.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
                usage = await conn.run_sync(lambda c: {c_["name"] for c_ in sa.inspect(c).get_columns("usage_records")})
                return names, usage
        finally:
            await eng.dispose()

    assert {"route_capacity", "model_aliases", "engine_model_name"} <= await columns()
    names, usage = await tables()
    assert "model_prices" in names and "cost" in usage
    await db_engine.downgrade(url, "0009")
    assert not {"route_capacity", "model_aliases", "engine_model_name"} & await columns()
    names, usage = await tables()
    assert "model_prices" not in names and "cost" not in usage
    await db_engine.upgrade(url)
    assert "route_capacity" in await columns()


async def _published_table(store: Any, endpoint_id: str, ok: Any, timeout: float = 10.0) -> RouteTable:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        raw = await store.get(ROUTES_PREFIX + endpoint_id)
        table = RouteTable.model_validate_json(raw) if raw else None
        if table is not None and ok(table):
            return table
        assert asyncio.get_running_loop().time() < deadline, table
        await asyncio.sleep(0.05)


async def test_model_aliases_and_engine_name_are_stored_published_and_patched(manager: dict) -> None:  # noqa: F811
    alice: APIClient = manager["alice"]
    store = manager["store"]
    await _folder_with(alice, "echo", {"model-definition.yaml": ECHO_DEF})
    for field, bad in (("model_aliases", ["has space"]), ("model_aliases", [""]), ("model_aliases", "gpt"),
                       ("model_aliases", ["a" * 65]), ("model_aliases", [f"m{i}" for i in range(17)]),
                       ("engine_model_name", ""), ("engine_model_name", "bad\nname"), ("engine_model_name", 3)):
        status, problem = await alice.request("POST", "/services", _create_body("echo", name="bad-svc",
                                                                                **{field: bad}))
        assert status == 400 and field in json.dumps(problem), (field, bad, problem)
    status, info = await alice.request("POST", "/services", _create_body(
        "echo", name="alias-svc", model_aliases=["gpt-4o-mini", "meta/llama-3", "gpt-4o-mini"],
        engine_model_name="/models/x.gguf"))
    assert status == 201, info
    assert info["model_aliases"] == ["gpt-4o-mini", "meta/llama-3"] and info["engine_model_name"] == "/models/x.gguf"
    eid = info["endpoint_id"]
    await _published_table(store, eid, lambda t: t.aliases == ["gpt-4o-mini", "meta/llama-3"]
                           and t.engine_model_name == "/models/x.gguf")
    status, info = await alice.request("PATCH", f"/services/{eid}", {"model_aliases": ["other"],
                                                                     "engine_model_name": None})
    assert status == 200 and info["changed"] == [] and info["model_aliases"] == ["other"], info
    await _published_table(store, eid, lambda t: t.aliases == ["other"] and t.engine_model_name is None)


def test_cli_sends_aliases() -> None:
    args = argparse.Namespace(model_folder="echo", env=None, scaling_group=None, resources=None,
                              model_definition_path=None, cors_origins=None, allow_outbound=False, route_capacity=None,
                              aliases=["gpt-4o-mini", "x"], engine_model_name="engine", name="x", count=1, image=None,
                              runtime_variant="custom", public=False)
    body = build_create_body(args)
    assert body["model_aliases"] == ["gpt-4o-mini", "x"] and body["engine_model_name"] == "engine"
    update = argparse.Namespace(replicas=None, image=None, runtime_variant=None, model_definition_path=None,
                                max_surge=None, model_folder=None, env=None, clear_env=False, resources=None,
                                public=None, cors_origins=None, clear_cors_origins=False, outbound=None,
                                redeploy=False, route_capacity=None, aliases=None, clear_aliases=True,
                                engine_model_name="")
    assert build_update_body(update) == {"model_aliases": [], "engine_model_name": None}
