"""The gateway listener against real echo replicas (subprocesses), with the official ``openai`` client: models by
name, pools, keys (Bearer and X-API-Key, revoked and expired), 400s naming the field with nothing reaching a
replica, usage asked for and stripped, per-key limits in memory (429 + Retry-After + x-ratelimit-* headers)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from appproxy.server import AppProxy
from common.apikeys import APIKEYS_PREFIX, ApiKeyRecord, hash_key, new_key
from common.protocol import RouteTable, RouteTarget
from common.store import MemoryStore
from tests.appproxy.appproxy_testkit import eventually, free_port, publish

ECHO = Path(__file__).resolve().parents[2] / "configs" / "models" / "echo" / "echo_server.py"
ALICE = uuid.UUID("00000000-0000-0000-0000-00000000a11c")
BOB = uuid.UUID("00000000-0000-0000-0000-000000000b0b")


class Echo:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, str(ECHO), "--port", str(self.port), "--quiet"],
                                     env={"ECHO_CHUNK_DELAY": "0.01", "PATH": "/usr/bin:/bin"},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def target(self) -> RouteTarget:
        return RouteTarget(route_id=uuid.uuid4(), host="127.0.0.1", port=self.port)

    async def info(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        async with session.get(f"http://127.0.0.1:{self.port}/") as resp:
            return await resp.json()

    async def ready(self, session: aiohttp.ClientSession) -> None:
        async def up() -> bool:
            try:
                async with session.get(f"http://127.0.0.1:{self.port}/health") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(up, timeout=15, what="echo replica healthy")


@pytest.fixture
def echoes() -> Iterator[Callable[[], Echo]]:
    started: list[Echo] = []

    def make() -> Echo:
        echo = Echo()
        started.append(echo)
        return echo

    yield make
    for echo in started:
        echo.proc.kill()
        echo.proc.wait(10)


def table(name: str, owner: uuid.UUID, *routes: RouteTarget) -> RouteTable:
    return RouteTable(endpoint_id=uuid.uuid4(), name=name, owner_id=owner, routes=list(routes))


async def add_key(store: MemoryStore, owner: uuid.UUID = ALICE, **fields: Any) -> tuple[str, ApiKeyRecord]:
    key = new_key()
    record = ApiKeyRecord(key_id=uuid.uuid4(), key_hash=hash_key(key), owner_id=owner, **fields)
    await store.put(APIKEYS_PREFIX + record.key_hash, record.model_dump_json())
    return key, record


@pytest.fixture
async def gw(make_proxy: Callable[..., Awaitable[AppProxy]], store: MemoryStore, echoes: Callable[[], Echo],
             http: aiohttp.ClientSession) -> AsyncIterator[dict[str, Any]]:
    proxy = await make_proxy(gateway={"port": 0})
    assert proxy.gateway is not None
    echo_a, echo_b, other = echoes(), echoes(), echoes()
    for e in (echo_a, echo_b, other):
        await e.ready(http)
    tables = [table("echo", ALICE, echo_a.target()), table("echo", ALICE, echo_b.target()),
              table("secret-model", BOB, other.target()), table("second", ALICE, echo_a.target())]
    for t in tables:
        await publish(store, t)
    await eventually(lambda: len(proxy.routes.tables) == len(tables), what="tables served")
    state: dict[str, Any] = {"proxy": proxy, "url": proxy.gateway.url, "echoes": (echo_a, echo_b, other),
                             "store": store, "http": http, "clients": [], "tables": tables}
    yield state
    for oa in state["clients"]:
        await oa.close()


def client(gw: dict[str, Any], key: str) -> openai.AsyncOpenAI:
    oa = openai.AsyncOpenAI(base_url=gw["url"], api_key=key, max_retries=0, timeout=20)
    gw["clients"].append(oa)
    return oa


async def post(gw: dict[str, Any], path: str, body: Any, key: str | None, **headers: str
               ) -> tuple[int, dict[str, str], Any]:
    if key is not None:
        headers.setdefault("Authorization", f"Bearer {key}")
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with gw["http"].post(gw["url"] + path, data=data, headers=headers) as resp:
        raw = await resp.read()
        return resp.status, dict(resp.headers), json.loads(raw) if raw else None


async def served(gw: dict[str, Any]) -> int:
    """Inference requests the replicas have answered (their /metrics, which counts requests per path)."""
    total = 0
    for echo in gw["echoes"]:
        async with gw["http"].get(f"http://127.0.0.1:{echo.port}/metrics") as resp:
            for line in (await resp.text()).splitlines():
                if line.startswith("echo_requests_total") and 'path="/v1/' in line and "/v1/models" not in line:
                    total += int(float(line.rsplit(" ", 1)[1]))
    return total


CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hello there gateway"}]}


async def test_openai_client_non_streaming_and_streaming(gw: dict[str, Any]) -> None:
    key, _ = await add_key(gw["store"])
    oa = client(gw, key)
    reply = await oa.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi there"}])
    assert reply.choices[0].message.content == "echo: hi there"
    assert reply.usage is not None and reply.usage.prompt_tokens == 2 and reply.usage.completion_tokens == 3
    # streaming without asking for usage: the gateway asks for it and strips the extra chunk
    chunks = [c async for c in await oa.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "one two three"}], stream=True)]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: one two three"
    assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks)
    # the client asked for usage itself: it gets the chunk
    chunks = [c async for c in await oa.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "a b"}], stream=True,
        stream_options={"include_usage": True})]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3 and not chunks[-1].choices
    completion = await oa.completions.create(model="echo", prompt="say this")
    assert completion.choices[0].text == "echo: say this"
    embedding = await oa.embeddings.create(model="echo", input=["a b c", "d"])
    assert [e.embedding[0] for e in embedding.data] == [3.0, 1.0]
    # the metered tokens are counted per endpoint too (the console's tokens/s: docs/console.md, "Metrics")
    echo_endpoints = {str(t.endpoint_id) for t in gw["tables"] if t.name == "echo"}

    def counted() -> bool:
        tokens = gw["proxy"].metrics.tokens
        return (sum(n for (_, kind), n in tokens.items() if kind == "completion") >= 3
                and sum(n for (_, kind), n in tokens.items() if kind == "prompt") >= 2
                and {e for e, _ in tokens} <= echo_endpoints)
    await eventually(counted, timeout=5, what="the gateway's token counters")


async def test_streaming_is_relayed_as_it_is_produced(gw: dict[str, Any]) -> None:
    key, _ = await add_key(gw["store"])
    words = " ".join(f"w{i}" for i in range(40))  # 41 chunks, 10 ms apart: ~0.4 s in all
    body = {**CHAT, "stream": True, "messages": [{"role": "user", "content": words}]}
    started = time.monotonic()
    first = None
    async with gw["http"].post(gw["url"] + "/chat/completions", json=body,
                               headers={"Authorization": f"Bearer {key}"}) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        async for _ in resp.content.iter_any():
            first = first or time.monotonic() - started
        total = time.monotonic() - started
    assert first is not None and first < total / 2, (first, total)


async def test_models_list_only_what_the_key_may_use(gw: dict[str, Any]) -> None:
    key, _ = await add_key(gw["store"])
    names = [m.id async for m in client(gw, key).models.list()]
    assert names == ["echo", "second"]
    limited, _ = await add_key(gw["store"], allowed_models=("second", "missing"))
    assert [m.id async for m in client(gw, limited).models.list()] == ["second"]
    admin, _ = await add_key(gw["store"], owner=uuid.uuid4(), owner_all=True)
    assert [m.id async for m in client(gw, admin).models.list()] == ["echo", "second", "secret-model"]


async def test_unknown_and_not_allowed_models_look_the_same(gw: dict[str, Any]) -> None:
    key, _ = await add_key(gw["store"], allowed_models=("second",))
    before = await served(gw)
    answers = []
    for model in ("echo", "secret-model", "no-such-model"):
        status, _, body = await post(gw, "/chat/completions", {**CHAT, "model": model}, key)
        assert status == 404 and body["error"]["code"] == "model_not_found" and body["error"]["param"] == "model"
        answers.append(body["error"]["message"].replace(model, "M"))
    assert len(set(answers)) == 1
    assert await served(gw) == before  # nothing reached a replica


async def test_key_headers_and_refusals(gw: dict[str, Any]) -> None:
    key, _ = await add_key(gw["store"])
    status, _, body = await post(gw, "/chat/completions", CHAT, None, **{"X-API-Key": key})
    assert status == 200 and body["choices"][0]["message"]["content"] == "echo: hello there gateway"
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": f"Basic {key}"},
                    {"X-API-Key": "x" * 10_000}):
        status, _, body = await post(gw, "/chat/completions", CHAT, None, **headers)
        assert status == 401 and body["error"]["code"] == "invalid_api_key", headers
    expired, _ = await add_key(gw["store"], expires_at=time.time() - 1)
    status, _, body = await post(gw, "/chat/completions", CHAT, expired)
    assert status == 401 and "expired" in body["error"]["message"]
    with pytest.raises(openai.AuthenticationError):
        await client(gw, "sk-nope").models.list()


async def test_revocation_takes_effect_within_a_second(gw: dict[str, Any]) -> None:
    key, record = await add_key(gw["store"])
    status, _, _ = await post(gw, "/chat/completions", CHAT, key)
    assert status == 200
    await gw["store"].delete(APIKEYS_PREFIX + record.key_hash)
    revoked_at = time.monotonic()
    while True:
        status, _, _ = await post(gw, "/chat/completions", CHAT, key)
        if status == 401:
            break
        assert time.monotonic() - revoked_at < 1.0, "still accepted a second after revocation"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize(("body", "param"), [
    (b"{not json", None),
    (b"[1, 2]", None),
    ({"messages": CHAT["messages"]}, "model"),
    ({**CHAT, "model": 7}, "model"),
    ({**CHAT, "model": ""}, "model"),
    ({**CHAT, "max_tokens": 0}, "max_tokens"),
    ({**CHAT, "max_tokens": -5}, "max_tokens"),
    ({**CHAT, "max_tokens": 10**12}, "max_tokens"),
    ({**CHAT, "max_tokens": "10"}, "max_tokens"),
    ({**CHAT, "max_completion_tokens": 0}, "max_completion_tokens"),
    ({**CHAT, "n": 10_000}, "n"),
    ({**CHAT, "n": True}, "n"),
    ({**CHAT, "stream": "yes"}, "stream"),
    ({**CHAT, "stream_options": "usage"}, "stream_options"),
    ({"model": "echo"}, "messages"),
    ({"model": "echo", "messages": []}, "messages"),
    ({"model": "echo", "messages": "hi"}, "messages"),
    (b'{"model": "echo", "messages": [{"role": "user", "content": NaN}]}', None),
    ({**CHAT, "pad": "x" * (9 * 1024 * 1024)}, None),
])
async def test_bad_input_is_400_naming_the_field_and_reaches_no_replica(gw: dict[str, Any], body: Any,
                                                                       param: str | None) -> None:
    key, _ = await add_key(gw["store"])
    before = await served(gw)
    status, _, answer = await post(gw, "/chat/completions", body, key)
    assert status == 400, answer
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    assert answer["error"]["param"] == param and answer["error"]["type"] == "invalid_request_error"
    if param:
        assert param in answer["error"]["message"]
    assert await served(gw) == before


async def test_a_large_body_arriving_in_pieces_is_read_whole(gw: dict[str, Any]) -> None:
    """A 850 KiB request (the echo replica takes up to 1 MiB), chunked and sent in 64 KiB pieces: read whole (not
    cut at the first piece) and relayed; the body budget is given back."""
    key, _ = await add_key(gw["store"])
    words = "word " * (170 * 1024)
    data = json.dumps({**CHAT, "messages": [{"role": "user", "content": "x"},
                                            {"role": "system", "content": words}]}).encode()

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 65536):
            yield data[i:i + 65536]
            await asyncio.sleep(0)

    async with gw["http"].post(gw["url"] + "/chat/completions", data=pieces(),
                               headers={"Authorization": f"Bearer {key}"}) as resp:
        body = await resp.json()
        assert resp.status == 200, body
    assert body["choices"][0]["message"]["content"] == "echo: x"
    assert gw["proxy"].bodies.used == 0


async def test_one_model_name_is_one_pool(gw: dict[str, Any]) -> None:
    key, _ = await add_key(gw["store"])
    echo_a, echo_b, _ = gw["echoes"]
    replicas = {(await e.info(gw["http"]))["replica"]: name for e, name in ((echo_a, "a"), (echo_b, "b"))}
    served_by: Counter[str] = Counter()
    for _ in range(30):
        status, headers, _ = await post(gw, "/chat/completions", CHAT, key)
        assert status == 200
        served_by[replicas[headers["X-Echo-Replica"]]] += 1
    assert sum(served_by.values()) == 30 and min(served_by["a"], served_by["b"]) >= 5, served_by

    async def all_counted() -> bool:  # what served() reads sees them (the check the 400 tests rely on)
        return await served(gw) == 30

    await eventually(all_counted, timeout=5, what="the replicas' counts")


async def test_rpm_limit_in_memory(gw: dict[str, Any]) -> None:
    key, _ = await add_key(gw["store"], rpm=3, tpm=1_000_000)
    remaining = []
    for _ in range(3):
        status, headers, _ = await post(gw, "/chat/completions", CHAT, key)
        assert status == 200
        assert headers["x-ratelimit-limit-requests"] == "3" and headers["x-ratelimit-limit-tokens"] == "1000000"
        assert headers["x-ratelimit-reset-requests"].endswith("s")
        remaining.append(int(headers["x-ratelimit-remaining-requests"]))
    assert remaining == [2, 1, 0]
    status, headers, body = await post(gw, "/chat/completions", CHAT, key)
    assert status == 429 and body["error"]["code"] == "rate_limit_requests"
    assert "requests per minute" in body["error"]["message"] and 50 <= int(headers["Retry-After"]) <= 60
    assert headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(openai.RateLimitError):
        await client(gw, key).chat.completions.create(model="echo", messages=CHAT["messages"])
    metrics = gw["proxy"].metrics
    assert metrics.gateway_rate_limited["requests"] == 2 and metrics.gateway_requests[("echo", "4xx")] == 2
    assert metrics.gateway_requests[("echo", "2xx")] == 3
    # another key is not affected
    other, _ = await add_key(gw["store"], rpm=3)
    status, _, _ = await post(gw, "/chat/completions", CHAT, other)
    assert status == 200


async def test_tpm_reserves_then_corrects_to_real_usage(gw: dict[str, Any]) -> None:
    key, _ = await add_key(gw["store"], tpm=100)
    # each reserves its prompt estimate (13) + max_tokens (70) = 83 but uses 3 + 4 = 7 tokens: without the
    # correction the second would be refused
    for _ in range(3):
        status, headers, _ = await post(gw, "/chat/completions", {**CHAT, "max_tokens": 70}, key)
        assert status == 200, headers
    assert headers["x-ratelimit-remaining-tokens"] == str(100 - 7 - 7 - 83)
    status, headers, body = await post(gw, "/chat/completions", {**CHAT, "max_tokens": 70}, key)
    assert status == 429 and body["error"]["code"] == "rate_limit_tokens"
    assert "tokens per minute" in body["error"]["message"] and int(headers["Retry-After"]) >= 1
    status, _, body = await post(gw, "/chat/completions", {**CHAT, "max_tokens": 500}, key)
    assert status == 429 and "Request too large" in body["error"]["message"]


async def test_max_parallel(gw: dict[str, Any]) -> None:
    key, _ = await add_key(gw["store"], max_parallel=1)
    words = " ".join(["w"] * 50)  # a stream of ~0.5 s holds the one slot
    body = {**CHAT, "stream": True, "messages": [{"role": "user", "content": words}]}
    async with gw["http"].post(gw["url"] + "/chat/completions", json=body,
                               headers={"Authorization": f"Bearer {key}"}) as resp:
        assert resp.status == 200
        status, _, answer = await post(gw, "/chat/completions", CHAT, key)
        assert status == 429 and answer["error"]["code"] == "max_parallel_exceeded"
        await resp.read()
    status, _, _ = await post(gw, "/chat/completions", CHAT, key)
    assert status == 200


async def test_unknown_paths_and_methods(gw: dict[str, Any]) -> None:
    key, _ = await add_key(gw["store"])
    async with gw["http"].get(gw["url"] + "/chat/completions", headers={"Authorization": f"Bearer {key}"}) as r:
        assert r.status == 405 and (await r.json())["error"]["code"] == "method_not_allowed"
    status, _, body = await post(gw, "/files", {}, key)
    assert status == 404 and body["error"]["code"] == "unknown_url"


async def test_a_model_at_zero_replicas_is_woken_and_the_request_held(gw: dict[str, Any]) -> None:
    from common.protocol import DEMAND_PREFIX

    key, _ = await add_key(gw["store"])
    cold = RouteTable(endpoint_id=uuid.uuid4(), name="cold", owner_id=ALICE, routes=[], hold_requests=True)
    await publish(gw["store"], cold)
    await eventually(lambda: gw["proxy"].routes.get(cold.endpoint_id) is not None, what="cold table served")
    request = asyncio.create_task(post(gw, "/chat/completions", {**CHAT, "model": "cold"}, key))

    async def demand() -> bool:
        return await gw["store"].get(DEMAND_PREFIX + str(cold.endpoint_id)) is not None

    await eventually(demand, what="demand signalled for the cold endpoint")
    assert not request.done()
    warm = cold.model_copy(update={"routes": [gw["echoes"][0].target()]})
    await publish(gw["store"], warm)
    status, _, body = await asyncio.wait_for(request, 10)
    assert status == 200 and body["choices"][0]["message"]["content"] == "echo: hello there gateway"


async def test_replica_never_sees_the_key(make_proxy: Callable[..., Awaitable[AppProxy]], store: MemoryStore,
                                          http: aiohttp.ClientSession) -> None:
    """Neither key header reaches the replica, whichever one carried the key (the request is copied only when
    an X-API-Key header is there to remove)."""
    seen: list[dict[str, str]] = []

    async def replica(request: web.Request) -> web.Response:
        seen.append({k.lower(): v for k, v in request.headers.items()})
        return web.json_response({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", replica)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        proxy = await make_proxy(gateway={"port": 0})
        assert proxy.gateway is not None
        await publish(store, table("echo", ALICE, RouteTarget(route_id=uuid.uuid4(), host="127.0.0.1", port=port)))
        await eventually(lambda: len(proxy.routes.tables) == 1, what="table served")
        key, _ = await add_key(store)
        gw = {"url": proxy.gateway.url, "http": http}
        for headers in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key},
                        {"X-API-Key": key, "Authorization": "Bearer other"}):
            status, _, _ = await post(gw, "/chat/completions", CHAT, None, **headers)
            assert status == 200
        assert len(seen) == 3
        for headers_seen in seen:
            assert "authorization" not in headers_seen and "x-api-key" not in headers_seen
            assert key not in " ".join(headers_seen.values())
    finally:
        await runner.cleanup()
