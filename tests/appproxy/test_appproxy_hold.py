"""Scale from zero at the proxy (appproxy.hold): demand signal, holding, its bounds; and the registration."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from common.protocol import DEMAND_PREFIX, PROXIES_PREFIX, DemandSignal, ProxyRegistration
from common.signing import SignedClient
from tests.appproxy.appproxy_testkit import auth, eventually, free_port, make_table, publish

CLUSTER_SECRET = "cluster-secret-for-the-appproxy-tests-0123"


async def test_held_request_is_served_once_a_route_appears(make_proxy, serve, upstreams, http, store):
    a = await upstreams("a")
    proxy = await make_proxy(proxy={"hold_timeout": 20})
    empty = make_table(port=free_port(), routes=[])
    url = await serve(proxy, empty)
    started = time.monotonic()
    request = asyncio.create_task(http.post(url + "/echo", data=b'{"q": 1}', headers=auth(empty.endpoint_id)))
    key = DEMAND_PREFIX + str(empty.endpoint_id)
    await eventually(lambda: store._data.get(key) is not None, what="the demand signal")
    signal = DemandSignal.model_validate_json(store._data[key])
    assert signal.endpoint_id == empty.endpoint_id and signal.held == 1 and abs(signal.at - time.time()) < 5
    await eventually(lambda: proxy.hold.held.get(empty.endpoint_id) == 1, what="the request held")
    assert proxy.metrics.held == {str(empty.endpoint_id): 1}
    await asyncio.sleep(0.3)
    assert not request.done() and a.hits == 0
    await publish(store, empty.model_copy(update={"routes": [a.target()]}))
    async with await request as resp:
        assert resp.status == 200
        seen = await resp.json()
    assert seen["body"] == '{"q": 1}' and "authorization" not in {k.lower() for k in seen["headers"]}
    assert time.monotonic() - started < 5
    assert not proxy.hold.held and not proxy.metrics.held


async def test_demand_is_debounced_per_endpoint(make_proxy, serve, upstreams, http, store):
    proxy = await make_proxy(proxy={"hold_timeout": 1.2, "demand_debounce": 1.0})
    table = make_table(port=free_port(), routes=[], open_to_public=True)
    url = await serve(proxy, table)
    writes: list[str] = []
    original = store.put

    async def counting_put(key: str, value: str) -> None:
        if key.startswith(DEMAND_PREFIX):
            writes.append(value)
        await original(key, value)

    store.put = counting_put
    try:
        results = await asyncio.gather(*(http.get(url + "/echo") for _ in range(20)))
    finally:
        store.put = original
    assert [r.status for r in results] == [503] * 20  # nothing came within 1.2 s
    # 20 requests held for 1.2 s: the first write, then at most one refresh per second
    assert 1 <= len(writes) <= 3, writes
    assert max(DemandSignal.model_validate_json(w).held for w in writes) >= 1


async def test_hold_timeout_is_503_with_retry_after(make_proxy, serve, http):
    proxy = await make_proxy(proxy={"hold_timeout": 0.5, "retry_after": 7})
    table = make_table(port=free_port(), routes=[], open_to_public=True)
    url = await serve(proxy, table)
    started = time.monotonic()
    async with http.get(url + "/v1/models") as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "7"
        assert resp.headers["Content-Type"].startswith("application/problem+json")
        body = await resp.json(content_type=None)
    assert 0.4 <= time.monotonic() - started < 3
    assert body["status"] == 503 and body["type"].endswith("/cold-start-timeout") and "0.5s" in body["detail"]
    assert proxy.metrics.rejections[(str(table.endpoint_id), "cold-start-timeout")] == 1


async def test_hold_count_limit_is_503_at_once(make_proxy, serve, upstreams, http, store):
    a = await upstreams("a")
    proxy = await make_proxy(proxy={"hold_timeout": 30, "hold_max_requests": 2})
    table = make_table(port=free_port(), routes=[], open_to_public=True)
    url = await serve(proxy, table)
    held = [asyncio.create_task(http.get(url + "/echo")) for _ in range(2)]
    await eventually(lambda: proxy.hold.held.get(table.endpoint_id) == 2, what="two held requests")
    started = time.monotonic()
    async with http.get(url + "/echo") as resp:
        assert resp.status == 503 and "Retry-After" in resp.headers
        body = await resp.json(content_type=None)
    assert body["type"].endswith("/hold-queue-full") and time.monotonic() - started < 1
    await publish(store, table.model_copy(update={"routes": [a.target()]}))
    for task in held:
        async with await task as resp:
            assert resp.status == 200


async def test_no_token_is_refused_before_holding(make_proxy, serve, http, store):
    proxy = await make_proxy(proxy={"hold_timeout": 30})
    table = make_table(port=free_port(), routes=[])
    url = await serve(proxy, table)
    async with http.get(url + "/echo") as resp:
        assert resp.status == 401
    assert proxy.hold.signals == 0 and DEMAND_PREFIX + str(table.endpoint_id) not in store._data


async def test_endpoint_removed_while_held_is_404(make_proxy, serve, http, store):
    proxy = await make_proxy(proxy={"hold_timeout": 30})
    table = make_table(port=free_port(), routes=[], open_to_public=True)
    url = await serve(proxy, table)
    request = asyncio.create_task(http.get(url + "/echo"))
    await eventually(lambda: proxy.hold.held.get(table.endpoint_id) == 1, what="the request held")
    await store.delete("/moorage/routes/" + str(table.endpoint_id))
    try:
        async with await request as resp:
            assert resp.status == 404
    except aiohttp.ClientConnectionError:
        pass  # the port closes with the endpoint; either way the client is not left waiting
    assert not proxy.hold.held


async def test_registration_and_signed_metrics(make_proxy, store, http):
    proxy = await make_proxy(proxy={"admin_port": 0, "proxy_id": "edge-1", "scrape_interval": 0.2},
                             secrets={"cluster_secret": CLUSTER_SECRET})
    key = PROXIES_PREFIX + "edge-1"
    await eventually(lambda: key in store._data, what="the registration")
    info = ProxyRegistration.model_validate_json(store._data[key])
    assert proxy.admin is not None and info.admin_url == f"http://127.0.0.1:{proxy.admin.port}"
    table = make_table(port=free_port(), routes=[], open_to_public=True)
    await publish(store, table)
    await eventually(lambda: proxy.routes.get(table.endpoint_id) is not None, what="the table")
    client = SignedClient(http, CLUSTER_SECRET)
    report = await client.call("GET", info.admin_url, f"/endpoints/{table.endpoint_id}/metrics")
    assert report["endpoint_id"] == str(table.endpoint_id)
    idle = report["proxy"]
    assert (idle["rps"], idle["in_flight"], idle["queued"], idle["queue_wait"]) == (0.0, 0, 0, 0.0), idle
    assert sum(idle["latency"]["counts"]) == 0 and not any(idle["tokens"].values()), idle  # nothing served yet
    await proxy.stop()
    assert key not in store._data  # deregistered on a clean stop
    assert json.loads(info.model_dump_json())["worker_index"] == 0


async def test_a_table_that_says_nothing_is_coming_is_503_at_once(make_proxy, serve, http, store):
    """Failing starts (hold_requests false): no client waits out the hold timeout; a flip releases held ones."""
    proxy = await make_proxy(proxy={"hold_timeout": 20})
    failing = make_table(port=free_port(), routes=[], open_to_public=True).model_copy(
        update={"hold_requests": False})
    url = await serve(proxy, failing)
    started = time.monotonic()
    async with http.get(url + "/v1/models") as resp:
        assert resp.status == 503 and "Retry-After" in resp.headers
    assert time.monotonic() - started < 2
    await publish(store, failing.model_copy(update={"hold_requests": True}))
    await eventually(lambda: proxy.routes.get(failing.endpoint_id).hold_requests, what="the new table")
    request = asyncio.create_task(http.get(url + "/v1/models"))
    await eventually(lambda: proxy.hold.held.get(failing.endpoint_id) == 1, what="the request held")
    await publish(store, failing)  # the starts began failing: the held request is answered now
    async with await request as resp:
        assert resp.status == 503
    assert time.monotonic() - started < 10
