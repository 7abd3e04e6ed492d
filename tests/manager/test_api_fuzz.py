"""Fuzz every documented route with malformed bodies and path values (hypothesis, driven by /openapi.json):
the manager must answer 4xx problems, never 5xx, and never leak a traceback."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.status import UserRole
from common.store import MemoryStore
from manager.api.openapi import build_spec
from manager.bootstrap import create_user
from manager.config import ManagerConfig
from manager.context import CTX
from manager.hmac_auth import sign_request
from manager.server import build_manager_app
from tests.services import free_port

SPEC = build_spec()
OPERATIONS = [(method.upper(), path, op) for path, item in SPEC["paths"].items() for method, op in item.items()]


@pytest.fixture(scope="module")
def threaded_manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    config = ManagerConfig.model_validate({
        "manager": {"listen_port": port, "storage_root": str(tmp / "storage"), "auto_migrate": True},
        "db": {"url": f"sqlite+aiosqlite:///{tmp}/m.db"},
        "secrets": {"cluster_secret": "c" * 32, "jwt_secret": "j" * 32, "keypair_encryption_key": "k" * 32},
        "reconcile": {"interval": 5},
    })
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state: dict = {}

    async def start() -> None:
        app = build_manager_app(config, MemoryStore())
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        _, ak, sk = await create_user(app[CTX].db, "fuzz@example.com", UserRole.USER, box=app[CTX].keypair_box)
        state.update(runner=runner, ak=ak, sk=sk)

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(60)
    yield {"port": port, **state}
    asyncio.run_coroutine_threadsafe(state["runner"].cleanup(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=12,
)


def _body_strategy(op: dict) -> st.SearchStrategy:
    ref = (op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {}).get("$ref"))
    if not ref:
        return st.one_of(st.none(), JSON.map(json.dumps).map(str.encode))
    props = list(SPEC["components"]["schemas"][ref.rsplit("/", 1)[1]].get("properties", {}))
    shaped = st.dictionaries(st.sampled_from(props), JSON, max_size=len(props)) if props else JSON
    return st.one_of(shaped.map(json.dumps).map(str.encode), JSON.map(json.dumps).map(str.encode),
                     st.binary(max_size=64))


PATH_VALUES = st.one_of(st.uuids().map(str), st.text(
    alphabet=st.characters(whitelist_categories=("L", "N"), whitelist_characters="-_."), min_size=1, max_size=20))


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=st.data())
def test_no_route_answers_5xx_to_malformed_input(threaded_manager: dict, data: st.DataObject) -> None:
    method, path, op = data.draw(st.sampled_from(OPERATIONS))
    concrete = "/".join(quote(data.draw(PATH_VALUES), safe="") if part.startswith("{") else part
                        for part in path.split("/"))
    if path == "/events/background-task":
        concrete += "?task_id=" + quote(data.draw(PATH_VALUES), safe="")
    body = data.draw(_body_strategy(op))
    content_type = "application/json" if body is not None else "text/plain"
    host = f"127.0.0.1:{threaded_manager['port']}"
    headers = sign_request(threaded_manager["ak"], threaded_manager["sk"], method, concrete, host, content_type)
    conn = http.client.HTTPConnection("127.0.0.1", threaded_manager["port"], timeout=30)
    try:
        conn.request(method, concrete, body=body, headers=headers)
        resp = conn.getresponse()
        raw = resp.read(256 * 1024)
    finally:
        conn.close()
    assert resp.status < 500, (method, concrete, body, resp.status, raw[:500])
    assert b"Traceback" not in raw
    if resp.status >= 400:
        assert resp.getheader("Content-Type", "").startswith("application/problem+json"), raw[:300]
