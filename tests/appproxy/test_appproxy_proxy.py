"""The app proxy end to end: real upstream servers, the real AppProxy on real ports, a MemoryStore."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import time
import uuid

import aiohttp
import pytest
from yarl import URL

from appproxy.forward import Forwarder
from common.protocol import RouteTarget
from tests.appproxy.appproxy_testkit import (
    auth,
    eventually,
    free_port,
    make_table,
    port_accepts,
    publish,
    token_for,
    unpublish,
)

# --- authentication --------------------------------------------------------------------------------------------

async def test_valid_token_gets_200(make_proxy, serve, upstreams, http):
    up = await upstreams("a")
    proxy = await make_proxy()
    table = make_table(port=free_port(), routes=[up.target()])
    url = await serve(proxy, table)
    for scheme in ("Bearer", "BackendAI", "bearer", "BACKENDAI"):
        async with http.get(url + "/echo", headers=auth(table.endpoint_id, scheme)) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["name"] == "a"


async def _assert_401(resp: aiohttp.ClientResponse, detail_part: str) -> None:
    assert resp.status == 401
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    body = await resp.json(content_type=None)
    assert body["status"] == 401 and body["type"].endswith("/auth-failed")
    assert detail_part in body["detail"], body["detail"]


async def test_token_failures_are_401(make_proxy, serve, upstreams, http):
    up = await upstreams("a")
    proxy = await make_proxy()
    revoked_id = str(uuid.uuid4())
    table = make_table(port=free_port(), routes=[up.target()], revoked=[revoked_id])
    url = await serve(proxy, table)
    cases = [
        ({}, "not provided"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "scheme"),
        ({"Authorization": "Bearer"}, "Empty token"),
        ({"Authorization": "Bearer not-a-jwt"}, "invalid token"),
        (auth(uuid.uuid4()), "not valid for this endpoint"),  # another endpoint's token
        (auth(table.endpoint_id, ttl=-60), "expired"),
        (auth(table.endpoint_id, token_id=revoked_id), "revoked"),
        ({"Authorization": f"Bearer {token_for(table.endpoint_id, secret='another-secret-0123456789abcdefghijkl')}"},
         "invalid token"),
    ]
    for headers, detail in cases:
        async with http.get(url + "/echo", headers=headers) as resp:
            await _assert_401(resp, detail)
    assert up.hits == 0  # nothing unauthenticated reached the replica


async def test_public_endpoint_needs_no_token(make_proxy, serve, upstreams, http):
    up = await upstreams("a")
    proxy = await make_proxy()
    table = make_table(port=free_port(), routes=[up.target()], open_to_public=True)
    url = await serve(proxy, table)
    async with http.post(url + "/echo", json={"x": 1}) as resp:
        assert resp.status == 200
    # a token sent to a public endpoint is still not passed on
    async with http.get(url + "/echo", headers=auth(table.endpoint_id)) as resp:
        assert "Authorization" not in (await resp.json())["headers"]


async def test_cors_preflight_is_answered_by_the_proxy(make_proxy, serve, upstreams, http):
    up = await upstreams("a")
    proxy = await make_proxy()
    table = make_table(port=free_port(), routes=[up.target()])
    url = await serve(proxy, table)
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    async with http.options(url + "/v1/chat/completions", headers=preflight) as resp:
        assert resp.status == 403  # no origin allowed by default (tests/security covers the rest)
    async with http.options(url + "/v1/chat/completions") as resp:  # not a pre-flight: token needed
        assert resp.status == 401
    assert up.hits == 0


# --- headers ---------------------------------------------------------------------------------------------------

async def test_credentials_and_hop_by_hop_headers_are_not_forwarded(make_proxy, serve, upstreams, http):
    up = await upstreams("a")
    proxy = await make_proxy()
    table = make_table(port=free_port(), routes=[up.target()])
    url = await serve(proxy, table)
    headers = {
        **auth(table.endpoint_id),
        "Cookie": "session=secret",
        "Connection": "keep-alive, X-Hop-Only",
        "X-Hop-Only": "1",
        "Keep-Alive": "timeout=5",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==",
        "TE": "trailers",
        "X-Forwarded-For": "6.6.6.6",  # forged by the client: not trusted by default
        "X-Forwarded-Host": "evil.example",
        "Forwarded": "for=6.6.6.6",
        "X-Custom": "kept",
    }
    target = URL(url + "/echo/a%2Fb?a=1&b=%2F&c=%26", encoded=True)  # sent byte for byte
    async with http.post(target, data=b"payload", headers=headers) as resp:
        assert resp.status == 200
        seen = await resp.json()
    got = {k.lower(): v for k, v in seen["headers"].items()}
    for name in ("authorization", "cookie", "x-hop-only", "keep-alive", "proxy-authorization", "te", "forwarded"):
        assert name not in got, name
    assert got["x-forwarded-for"] == ["127.0.0.1"]
    assert got["x-forwarded-proto"] == ["http"]
    assert got["x-forwarded-host"] == [f"127.0.0.1:{table.port}"]
    assert got["x-custom"] == ["kept"]
    assert seen["path_qs"] == "/echo/a%2Fb?a=1&b=%2F&c=%26"
    assert seen["method"] == "POST" and seen["body"] == "payload"


async def test_trusted_forwarded_chain_is_appended(make_proxy, serve, upstreams, http):
    up = await upstreams("a")
    proxy = await make_proxy(proxy={"trust_forwarded_headers": True})
    table = make_table(port=free_port(), routes=[up.target()], open_to_public=True)
    url = await serve(proxy, table)
    headers = {"X-Forwarded-For": "10.0.0.1", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "api.example"}
    async with http.get(url + "/echo", headers=headers) as resp:
        got = {k.lower(): v for k, v in (await resp.json())["headers"].items()}
    assert got["x-forwarded-for"] == ["10.0.0.1, 127.0.0.1"]
    assert got["x-forwarded-proto"] == ["https"]
    assert got["x-forwarded-host"] == ["api.example"]


async def test_encoded_responses_are_relayed_untouched(make_proxy, serve, upstreams, http):
    up = await upstreams("a")
    proxy = await make_proxy()
    table = make_table(port=free_port(), routes=[up.target()], open_to_public=True)
    url = await serve(proxy, table)
    async with http.get(url + "/gzip") as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        assert (await resp.json())["name"] == "a"  # decoded exactly once, by the client


async def test_encoded_request_bodies_are_relayed_untouched(make_proxy, serve, upstreams, http):
    """A gzip request body reaches the replica as sent, still labelled gzip (not decoded on the way, which would
    also let a small body expand past max_body_size inside the proxy)."""
    up = await upstreams("a")
    proxy = await make_proxy(proxy={"max_body_size": 4096})
    table = make_table(port=free_port(), routes=[up.target()], open_to_public=True)
    url = await serve(proxy, table)
    text = json.dumps({"prompt": "y" * 20000})  # 20 kB that gzip packs into well under the limit
    packed = gzip.compress(text.encode())
    assert len(packed) < 4096 < len(text)
    async with http.post(url + "/echo", data=packed, headers={"Content-Encoding": "gzip",
                                                              "Content-Type": "application/json"}) as resp:
        assert resp.status == 200, await resp.text()
        seen = await resp.json()
    assert seen["headers"]["Content-Encoding"] == ["gzip"]
    assert seen["body"] == text  # the replica (an aiohttp server) decoded it once


# --- streaming and disconnects ---------------------------------------------------------------------------------

@pytest.mark.parametrize("path,content_type", [("/sse", "text/event-stream"), ("/chunked", "application/json")])
async def test_stream_arrives_chunk_by_chunk(make_proxy, serve, upstreams, http, path, content_type):
    up = await upstreams("a")
    proxy = await make_proxy()
    table = make_table(port=free_port(), routes=[up.target()])
    url = await serve(proxy, table)
    async with http.get(url + path, headers=auth(table.endpoint_id)) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith(content_type)
        assert resp.headers["X-Accel-Buffering"] == "no"
        assert resp.headers["Cache-Control"] == "no-cache"
        first = await asyncio.wait_for(resp.content.readuntil(b"\n"), 10)
        # the client has the first chunk while the replica has not even produced the second
        assert not up.second_sent
        assert first in (b"data: 1\n", b'{"part": 1}\n')
        up.release.set()
        rest = await asyncio.wait_for(resp.content.read(), 10)
    assert up.second_sent
    assert rest.strip().endswith((b"data: 2", b'{"part": 2}'))


async def test_client_disconnect_mid_stream_closes_upstream(make_proxy, serve, upstreams):
    up = await upstreams("a")
    proxy = await make_proxy()
    table = make_table(port=free_port(), routes=[up.target()])
    url = await serve(proxy, table)
    async with aiohttp.ClientSession() as client:
        resp = await client.get(url + "/sse", headers=auth(table.endpoint_id))
        await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 10)
        resp.close()  # drops the connection
    await asyncio.wait_for(up.handler_ended.wait(), 3)  # typically milliseconds; slack for a loaded machine
    assert up.handler_cancelled and not up.second_sent
    await eventually(lambda: proxy.metrics.client_disconnects[str(table.endpoint_id)] == 1,
                     what="disconnect counted")
    assert not proxy.metrics.in_flight


async def test_client_disconnect_while_waiting_closes_upstream(make_proxy, serve, upstreams):
    """A non-streaming generation is abandoned too (LiteLLM #37140 is the failure we avoid)."""
    up = await upstreams("a")
    proxy = await make_proxy()
    table = make_table(port=free_port(), routes=[up.target()])
    url = await serve(proxy, table)
    async with aiohttp.ClientSession() as client:
        task = asyncio.create_task(client.get(url + "/slow", headers=auth(table.endpoint_id)))
        await eventually(lambda: up.hits == 1, what="request reached the replica")
        task.cancel()  # the client gives up: its connection closes
        with pytest.raises(asyncio.CancelledError):
            await task
    await asyncio.wait_for(up.handler_ended.wait(), 3)
    assert up.handler_cancelled


async def test_upstream_breaking_off_mid_stream_truncates_the_response(make_proxy, serve, upstreams, http):
    up = await upstreams("a")
    proxy = await make_proxy()
    table = make_table(port=free_port(), routes=[up.target()], open_to_public=True)
    url = await serve(proxy, table)
    async with http.get(url + "/sse") as resp:
        await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 10)
        await up.stop()  # the replica dies mid-stream
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(resp.content.read(), 10)
    kinds = {k[2] for k in proxy.metrics.upstream_failures}
    assert "stream" in kinds


# --- retries, ejection, balancing ------------------------------------------------------------------------------

async def test_retry_before_first_byte_when_a_route_is_down(make_proxy, serve, upstreams, http):
    up = await upstreams("a")
    proxy = await make_proxy()
    dead_route = RouteTarget(route_id=uuid.uuid4(), host="127.0.0.1", port=free_port())  # nothing listens
    table = make_table(port=free_port(), routes=[up.target(), dead_route])
    url = await serve(proxy, table)
    for i in range(30):
        async with http.post(url + "/echo", data=f"body-{i}".encode(), headers=auth(table.endpoint_id)) as resp:
            assert resp.status == 200
            assert (await resp.json())["body"] == f"body-{i}"  # the retried request carries its body
    assert up.hits == 30
    endpoint = str(table.endpoint_id)
    assert proxy.metrics.retries[endpoint] >= 1
    # three refused connections in a row ejected the dead route
    assert Forwarder.key(dead_route) in proxy.forwarder.outliers.ejected(time.monotonic())
    assert proxy.metrics.retries[endpoint] == 3


async def test_all_routes_down_is_502(make_proxy, serve, http):
    proxy = await make_proxy()
    dead = [RouteTarget(route_id=uuid.uuid4(), host="127.0.0.1", port=free_port()) for _ in range(2)]
    table = make_table(port=free_port(), open_to_public=True, routes=dead)
    url = await serve(proxy, table)
    async with http.get(url + "/echo") as resp:
        assert resp.status == 502
        body = await resp.json(content_type=None)
        assert "could be reached" in body["detail"]


async def test_route_returning_5xx_is_ejected(make_proxy, serve, upstreams, http):
    good, bad = await upstreams("good"), await upstreams("bad")
    bad.fail_status = 500
    proxy = await make_proxy(outlier={"consecutive_failures": 3})
    table = make_table(port=free_port(), routes=[good.target(), bad.target()], open_to_public=True)
    url = await serve(proxy, table)
    statuses = []
    for _ in range(200):
        async with http.get(url + "/echo") as resp:
            statuses.append(resp.status)
        if bad.hits >= 3:
            break
    assert bad.hits == 3 and statuses.count(500) == 3  # 5xx are relayed, not retried
    for _ in range(30):
        async with http.get(url + "/echo") as resp:
            assert resp.status == 200
    assert bad.hits == 3  # ejected: no more traffic
    assert sum(proxy.metrics.ejections.values()) == 1


async def test_traffic_ratio_weights(make_proxy, serve, upstreams, http):
    a, b, c = await upstreams("a"), await upstreams("b"), await upstreams("c")
    proxy = await make_proxy()
    table = make_table(port=free_port(), routes=[a.target(1.0), b.target(1.0), c.target(0.0)],
                       open_to_public=True)
    url = await serve(proxy, table)
    for _ in range(60):
        async with http.get(url + "/echo") as resp:
            assert resp.status == 200
    assert c.hits == 0
    assert a.hits > 0 and b.hits > 0 and a.hits + b.hits == 60


async def test_concurrent_requests_spread_by_load(make_proxy, serve, upstreams, http):
    """Power of two choices: with one replica busy on a long request, the next requests avoid it."""
    a, b = await upstreams("a"), await upstreams("b")
    proxy = await make_proxy()
    table = make_table(port=free_port(), routes=[a.target(), b.target()], open_to_public=True)
    url = await serve(proxy, table)
    hold = asyncio.create_task(http.get(url + "/hold"))
    await eventually(lambda: a.hits + b.hits == 1, what="the held request")
    busy, idle = (a, b) if a.hits else (b, a)
    for _ in range(10):
        async with http.get(url + "/echo") as resp:
            assert (await resp.json())["name"] == idle.name
    busy.release.set()
    (await hold).release()


# --- route table changes ---------------------------------------------------------------------------------------

async def test_table_updates_and_endpoint_deletion(make_proxy, serve, upstreams, store, http):
    a, b = await upstreams("a"), await upstreams("b")
    proxy = await make_proxy()
    table = make_table(port=free_port(), routes=[a.target()], open_to_public=True)
    url = await serve(proxy, table)
    async with http.get(url + "/echo") as resp:
        assert (await resp.json())["name"] == "a"

    updated = table.model_copy(update={"routes": [b.target()], "updated_at": time.time() + 1})
    await serve(proxy, updated)
    for _ in range(5):
        async with http.get(url + "/echo") as resp:
            assert (await resp.json())["name"] == "b"

    await unpublish(store, table.endpoint_id)
    await eventually(lambda: table.port not in proxy.frontend.ports, what="port released")
    await eventually(lambda: _not(port_accepts(table.port)), what="port closed")

    await serve(proxy, updated)  # the endpoint comes back on the same port
    async with http.get(url + "/echo") as resp:
        assert (await resp.json())["name"] == "b"


async def _not(awaitable):
    return not await awaitable


async def test_invalid_table_does_not_disturb_others(make_proxy, serve, upstreams, store, http):
    a = await upstreams("a")
    proxy = await make_proxy()
    table = make_table(port=free_port(), routes=[a.target()], open_to_public=True)
    url = await serve(proxy, table)
    await store.put("/moorage/routes/" + str(uuid.uuid4()), "{not json")
    await store.put("/moorage/routes/" + str(table.endpoint_id), json.dumps({"endpoint_id": "nope"}))
    other = make_table(port=free_port(), routes=[a.target()], open_to_public=True)
    other_url = await serve(proxy, other)  # the watch loop is alive
    for base in (url, other_url):
        async with http.get(base + "/echo") as resp:
            assert resp.status == 200  # the bad update kept the last good table


async def test_port_in_use_is_retried_without_blocking_others(make_proxy, serve, upstreams, store, http):
    a = await upstreams("a")
    proxy = await make_proxy()
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    busy_port = blocker.getsockname()[1]
    try:
        blocked = make_table(port=busy_port, routes=[a.target()], open_to_public=True)
        await publish(store, blocked)
        other = make_table(port=free_port(), routes=[a.target()], open_to_public=True)
        other_url = await serve(proxy, other)
        async with http.get(other_url + "/echo") as resp:
            assert resp.status == 200
        await eventually(lambda: busy_port in proxy.frontend.failed_ports, what="bind failure recorded")
    finally:
        blocker.close()
    await eventually(lambda: proxy.frontend.ports.get(busy_port) == blocked.endpoint_id, what="bind retried")
    async with http.get(f"http://127.0.0.1:{busy_port}/echo") as resp:
        assert resp.status == 200


# --- limits ----------------------------------------------------------------------------------------------------

async def test_oversize_body_is_413(make_proxy, serve, upstreams, http):
    a = await upstreams("a")
    proxy = await make_proxy(proxy={"max_body_size": 1024})
    table = make_table(port=free_port(), routes=[a.target()], open_to_public=True)
    url = await serve(proxy, table)
    async with http.post(url + "/echo", data=b"x" * 1024) as resp:
        assert resp.status == 200  # exactly the limit is fine
    async with http.post(url + "/echo", data=b"x" * 4096) as resp:  # with Content-Length
        assert resp.status == 413
        assert resp.headers["Content-Type"].startswith("application/problem+json")

    async def chunks():
        for _ in range(4):
            yield b"x" * 600

    async with http.post(url + "/echo", data=chunks()) as resp:  # chunked, no length announced
        assert resp.status == 413
    assert a.hits == 1


async def test_oversize_headers_are_refused(make_proxy, serve, upstreams, http):
    a = await upstreams("a")
    proxy = await make_proxy(proxy={"max_header_size": 2048})
    table = make_table(port=free_port(), routes=[a.target()], open_to_public=True)
    url = await serve(proxy, table)
    async with http.get(url + "/echo", headers={"X-Big": "y" * 4096}) as resp:  # one huge line: parser
        assert resp.status in (400, 431)
    many = {f"X-H{i}": "z" * 300 for i in range(10)}  # each line fine, 3 KiB in total
    async with http.get(url + "/echo", headers=many) as resp:
        assert resp.status == 431
        assert resp.headers["Content-Type"].startswith("application/problem+json")
    assert a.hits == 0


async def test_no_route_is_503_with_retry_after(make_proxy, serve, upstreams, http):
    a = await upstreams("a")
    proxy = await make_proxy(proxy={"retry_after": 3, "hold_timeout": 0})  # no holding (see test_appproxy_hold)
    for routes in ([], [a.target(0.0)]):
        table = make_table(port=free_port(), routes=routes, open_to_public=True)
        url = await serve(proxy, table)
        async with http.get(url + "/echo") as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "3"
            body = await resp.json(content_type=None)
            assert body["status"] == 503
    assert a.hits == 0


async def test_per_endpoint_concurrency_limit(make_proxy, serve, upstreams, http):
    a = await upstreams("a")
    proxy = await make_proxy(proxy={"max_concurrency_per_endpoint": 1})
    table = make_table(port=free_port(), routes=[a.target()], open_to_public=True)
    url = await serve(proxy, table)
    held = asyncio.create_task(http.get(url + "/hold"))
    await eventually(lambda: a.hits == 1, what="held request")
    async with http.get(url + "/echo") as resp:
        assert resp.status == 503 and "Retry-After" in resp.headers
    a.release.set()
    first = await held
    assert first.status == 200
    first.release()
    async with http.get(url + "/echo") as resp:
        assert resp.status == 200


async def test_trace_is_refused(make_proxy, serve, upstreams, http):
    a = await upstreams("a")
    proxy = await make_proxy()
    table = make_table(port=free_port(), routes=[a.target()], open_to_public=True)
    url = await serve(proxy, table)
    async with http.request("TRACE", url + "/") as resp:
        assert resp.status == 405
    assert a.hits == 0


async def test_metrics_count_requests(make_proxy, serve, upstreams, http):
    a = await upstreams("a")
    proxy = await make_proxy()
    table = make_table(port=free_port(), routes=[a.target()])
    url = await serve(proxy, table)
    async with http.get(url + "/echo", headers=auth(table.endpoint_id)) as resp:
        assert resp.status == 200
    async with http.get(url + "/echo") as resp:
        assert resp.status == 401
    endpoint, route = str(table.endpoint_id), str(table.routes[0].route_id)
    assert proxy.metrics.requests[(endpoint, route, "2xx")] == 1
    assert proxy.metrics.requests[(endpoint, "-", "4xx")] == 1
    assert sum(proxy.metrics.durations[(endpoint, route)]) == 1
    assert sum(proxy.metrics.durations[(endpoint, "-")]) == 1
    assert not proxy.metrics.in_flight
    snap = proxy.metrics.snapshot()
    assert snap["requests"][f"{endpoint}/{route}/2xx"] == 1


async def test_expect_continue_is_answered_only_after_auth(make_proxy, serve, upstreams, http):
    a = await upstreams("a")
    proxy = await make_proxy()
    table = make_table(port=free_port(), routes=[a.target()])
    url = await serve(proxy, table)
    async with http.post(url + "/echo", data=b"x" * 1000, expect100=True) as resp:
        assert resp.status == 401
    async with http.post(url + "/echo", data=b"x" * 1000, expect100=True, headers=auth(table.endpoint_id)) as resp:
        assert resp.status == 200
        assert (await resp.json())["body"] == "x" * 1000
    assert a.hits == 1


async def test_head_no_content_and_large_bodies(make_proxy, serve, upstreams, http):
    a = await upstreams("a")
    proxy = await make_proxy()
    table = make_table(port=free_port(), routes=[a.target()], open_to_public=True)
    url = await serve(proxy, table)
    async with http.head(url + "/echo") as resp:
        assert resp.status == 200 and await resp.read() == b""
    async with http.get(url + "/status/204") as resp:
        assert resp.status == 204 and await resp.read() == b""
    async with http.get(url + "/status/404") as resp:
        assert resp.status == 404  # the replica's own 4xx is relayed and is not a failure
    big = b"y" * (3 * 1024 * 1024)
    async with http.put(url + "/echo", data=big) as resp:
        assert resp.status == 200
        assert resp.headers.get("Content-Length") is not None  # a sized response stays sized
        assert len((await resp.json())["body"]) == len(big)
    assert not proxy.metrics.upstream_failures


async def test_existing_tables_are_served_when_start_returns(store, make_proxy, upstreams, http):
    a = await upstreams("a")
    table = make_table(port=free_port(), routes=[a.target()], open_to_public=True)
    await publish(store, table)
    proxy = await make_proxy()
    assert proxy.frontend.ports == {table.port: table.endpoint_id}
    async with http.get(f"http://127.0.0.1:{table.port}/echo") as resp:
        assert resp.status == 200
    await proxy.stop()
    await proxy.stop()  # idempotent
    assert not await port_accepts(table.port)


async def test_port_conflict_keeps_the_endpoint_already_bound(make_proxy, serve, upstreams, store, http):
    a, b = await upstreams("a"), await upstreams("b")
    proxy = await make_proxy()
    port = free_port()
    first = make_table(port=port, routes=[a.target()], open_to_public=True)
    url = await serve(proxy, first)
    second = make_table(port=port, routes=[b.target()], open_to_public=True)
    await publish(store, second)
    await eventually(lambda: proxy.routes.get(second.endpoint_id) == second, what="second table seen")
    await proxy.frontend.sync()
    async with http.get(url + "/echo") as resp:
        assert (await resp.json())["name"] == "a"
    await unpublish(store, first.endpoint_id)  # the conflict resolves: the port goes to the other endpoint
    await eventually(lambda: proxy.frontend.ports.get(port) == second.endpoint_id, what="port handed over")
    async with http.get(url + "/echo") as resp:
        assert (await resp.json())["name"] == "b"
