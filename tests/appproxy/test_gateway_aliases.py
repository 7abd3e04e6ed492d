"""Model aliases: the pure catalog rules (names and aliases a key may use, pools by alias, the engine's name) and a
real gateway before a real echo replica (which answers with the body's ``model``): a request by alias reaches the
service, ``model`` is rewritten to ``engine_model_name`` when the service sets one and passed through otherwise,
``/v1/models`` lists aliases, a key limited to an alias sees only it, and usage is recorded under the service's
name."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import aiohttp

from appproxy.gateway.catalog import engine_model, names_for, pool_of, visible_models
from appproxy.gateway.request import Kind, parse_request, upstream_body
from appproxy.server import AppProxy
from common.apikeys import ApiKeyRecord
from common.protocol import RouteTable
from common.store import MemoryStore
from tests.appproxy.appproxy_testkit import eventually, publish
from tests.appproxy.conftest import proxy_config
from tests.appproxy.test_gateway import ALICE, BOB, Echo, add_key, echoes  # noqa: F401 - echoes: a fixture


def _table(name: str, owner: uuid.UUID, aliases: list[str], engine: str | None = None) -> RouteTable:
    return RouteTable(endpoint_id=uuid.uuid4(), name=name, owner_id=owner, aliases=aliases, engine_model_name=engine)


def _key(**fields: Any) -> ApiKeyRecord:
    return ApiKeyRecord(key_id=uuid.uuid4(), key_hash="b" * 64, owner_id=ALICE, **fields)


def test_catalog_serves_names_and_aliases() -> None:
    llama = _table("llama", ALICE, ["gpt-4o-mini", "meta/llama-3"], engine="/models/llama.gguf")
    other = _table("llama-b", ALICE, ["gpt-4o-mini"], engine="/models/llama.gguf")
    bobs = _table("secret", BOB, ["gpt-4o-mini"])
    tables = [llama, other, bobs]
    assert visible_models(_key(), tables) == ["gpt-4o-mini", "llama", "llama-b", "meta/llama-3"]
    assert [t.name for t in pool_of(_key(), "gpt-4o-mini", tables)] == sorted(
        ["llama", "llama-b"], key=lambda n: {"llama": llama, "llama-b": other}[n].endpoint_id)  # never Bob's
    assert pool_of(_key(), "secret", tables) == []
    limited = _key(allowed_models=("gpt-4o-mini",))
    assert visible_models(limited, tables) == ["gpt-4o-mini"] and pool_of(limited, "llama", tables) == []
    assert names_for(_key(allowed_models=("llama",)), llama) == ["llama", "gpt-4o-mini", "meta/llama-3"]
    assert engine_model("gpt-4o-mini", [llama, other]) == "/models/llama.gguf"
    assert engine_model("gpt-4o-mini", [llama, _table("c", ALICE, ["gpt-4o-mini"])]) is None  # they disagree
    assert engine_model("llama", [_table("llama", ALICE, [], engine="llama")]) is None  # nothing to rewrite
    parsed = parse_request(Kind.CHAT, b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}',
                           max_tokens_limit=100, max_n=4)
    assert b'"model": "/models/llama.gguf"' in upstream_body(parsed, b"{}", "/models/llama.gguf")


async def test_requests_by_alias_are_rewritten_for_the_engine(
        store: MemoryStore, echoes: Callable[[], Echo], http: aiohttp.ClientSession) -> None:  # noqa: F811
    records: list[Any] = []

    async def sink(batch: Any) -> None:
        records.extend(batch)

    proxy = AppProxy(proxy_config(gateway={"port": 0, "usage_flush_interval": 0.1}), store, usage_sink=sink)
    await proxy.start()
    try:
        await _aliases(proxy, store, echoes, http, records)
    finally:
        await proxy.stop()


async def _aliases(proxy: AppProxy, store: MemoryStore, echoes: Callable[[], Echo],  # noqa: F811
                   http: aiohttp.ClientSession, records: list[Any]) -> None:
    assert proxy.gateway is not None
    echo = echoes()
    await echo.ready(http)
    rewritten = RouteTable(endpoint_id=uuid.uuid4(), name="llama", owner_id=ALICE, routes=[echo.target()],
                           aliases=["gpt-4o-mini"], engine_model_name="engine-name")
    plain = RouteTable(endpoint_id=uuid.uuid4(), name="plain", owner_id=ALICE, routes=[echo.target()],
                       aliases=["plain-alias"])
    for t in (rewritten, plain):
        await publish(store, t)
    await eventually(lambda: len(proxy.routes.tables) == 2, what="tables served")
    key, _ = await add_key(store)
    limited, _ = await add_key(store, allowed_models=("plain-alias",))
    await eventually(lambda: len(proxy.gateway.keys) == 2, what="keys")  # type: ignore[union-attr]

    async def chat(model: str, key: str) -> tuple[int, Any]:
        async with http.post(proxy.gateway.url + "/chat/completions",  # type: ignore[union-attr]
                             json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
                             headers={"Authorization": f"Bearer {key}"}) as resp:
            return resp.status, await resp.json()

    status, body = await chat("gpt-4o-mini", key)
    assert status == 200 and body["model"] == "engine-name"  # the engine got its own name
    status, body = await chat("llama", key)
    assert status == 200 and body["model"] == "engine-name"
    status, body = await chat("plain-alias", key)
    assert status == 200 and body["model"] == "plain-alias"  # no engine name: passed through
    async with http.get(proxy.gateway.url + "/models", headers={"Authorization": f"Bearer {key}"}) as resp:
        assert [m["id"] for m in (await resp.json())["data"]] == ["gpt-4o-mini", "llama", "plain", "plain-alias"]
    async with http.get(proxy.gateway.url + "/models", headers={"Authorization": f"Bearer {limited}"}) as resp:
        assert [m["id"] for m in (await resp.json())["data"]] == ["plain-alias"]
    assert (await chat("plain-alias", limited))[0] == 200
    status, body = await chat("plain", limited)
    assert status == 404 and body["error"]["code"] == "model_not_found"
    await eventually(lambda: len(records) == 4, what="usage records")
    assert [r.model for r in records] == ["llama", "llama", "plain", "plain"]  # by service name
