"""Issue #5 behaviour against real sockets: ejection and re-admission, retries only before the first byte,
panic mode, idle (not total) upstream timeout, disconnect propagation within a second."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from appproxy.forward import Forwarder
from tests.appproxy.appproxy_testkit import ResetServer, auth, eventually, free_port, make_table


async def test_ejected_route_is_readmitted_after_the_backoff(make_proxy, serve, upstreams, http):
    good, flaky = await upstreams("good"), await upstreams("flaky")
    flaky.fail_status = 503
    proxy = await make_proxy(outlier={"consecutive_failures": 2, "base_ejection": 0.5, "max_ejection": 5.0})
    table = make_table(port=free_port(), routes=[good.target(), flaky.target()], open_to_public=True)
    url = await serve(proxy, table)
    key = Forwarder.key(table.routes[1])

    async def until_ejected() -> bool:
        async with http.get(url + "/echo"):
            pass
        return key in proxy.forwarder.outliers.ejected(time.monotonic())

    await eventually(until_ejected, what="flaky route ejected")
    ejected_at, hits = time.monotonic(), flaky.hits
    flaky.fail_status = None  # it recovers while ejected
    # Only well inside the 0.5 s ejection (a check-then-send near its end would race the re-admission).
    while time.monotonic() - ejected_at < 0.3 and key in proxy.forwarder.outliers.ejected(time.monotonic()):
        async with http.get(url + "/echo") as resp:
            assert resp.status == 200
    assert flaky.hits == hits  # no traffic while ejected (1 of 2 available: not panic)
    async def readmitted() -> bool:
        return key not in proxy.forwarder.outliers.ejected(time.monotonic())

    await eventually(readmitted, what="the ejection to end")
    assert time.monotonic() - ejected_at >= 0.45

    async def flaky_served() -> bool:
        async with http.get(url + "/echo") as resp:
            assert resp.status == 200
        return flaky.hits > hits

    await eventually(flaky_served, what="re-admitted route gets traffic again")
    assert proxy.metrics.ejections[(str(table.endpoint_id), str(table.routes[1].route_id))] == 1


async def test_connection_reset_before_the_first_byte_is_retried(make_proxy, serve, upstreams, http):
    good = await upstreams("good")
    resetter = await ResetServer().start()
    try:
        proxy = await make_proxy()
        table = make_table(port=free_port(), routes=[resetter.target(), good.target()], open_to_public=True)
        url = await serve(proxy, table)
        for i in range(20):
            async with http.post(url + "/echo", data=f"b{i}".encode()) as resp:
                assert resp.status == 200
                assert (await resp.json())["body"] == f"b{i}"
        assert resetter.connections >= 1 and good.hits == 20
        endpoint = str(table.endpoint_id)
        assert proxy.metrics.retries[endpoint] == resetter.connections
        assert any(k[2] == "reset" for k in proxy.metrics.upstream_failures)
    finally:
        await resetter.stop()


async def test_no_retry_after_the_first_byte(make_proxy, serve, upstreams, http):
    a, b = await upstreams("a"), await upstreams("b")
    proxy = await make_proxy()
    table = make_table(port=free_port(), routes=[a.target(), b.target()], open_to_public=True)
    url = await serve(proxy, table)
    async with http.get(url + "/die-after-first") as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(resp.read(), 10)
    assert a.hits + b.hits == 1  # the replica that broke off was not replaced mid-response
    assert proxy.metrics.retries[str(table.endpoint_id)] == 0


async def test_panic_mode_balances_over_ejected_routes(make_proxy, serve, upstreams, http):
    good, bad1, bad2 = await upstreams("good"), await upstreams("bad1"), await upstreams("bad2")
    bad1.fail_status = bad2.fail_status = 500
    proxy = await make_proxy(outlier={"consecutive_failures": 1})
    table = make_table(port=free_port(), routes=[good.target(), bad1.target(), bad2.target()],
                       open_to_public=True)
    url = await serve(proxy, table)
    for _ in range(300):
        async with http.get(url + "/echo"):
            pass
        if bad1.hits and bad2.hits:
            break
    assert len(proxy.forwarder.outliers.ejected(time.monotonic())) == 2  # 1 of 3 available: below half
    before = bad1.hits + bad2.hits
    for _ in range(40):
        async with http.get(url + "/echo"):
            pass
    assert bad1.hits + bad2.hits > before  # panic: traffic still spread over the ejected routes too
    assert good.hits < 40 + 3


async def test_idle_timeout_is_not_a_total_deadline(make_proxy, serve, upstreams, http):
    up = await upstreams("a")
    proxy = await make_proxy(proxy={"upstream_read_timeout": 0.6})
    table = make_table(port=free_port(), routes=[up.target()], open_to_public=True)
    url = await serve(proxy, table)
    started = time.monotonic()
    async with http.get(url + "/drip?n=6&interval=0.3") as resp:  # 1.5 s in total, never 0.6 s silent
        body = await resp.read()
    assert time.monotonic() - started >= 1.4
    assert body.count(b"data: ") == 6

    async with http.get(url + "/stall") as resp:  # one chunk, then silent: cut after the idle timeout
        assert await resp.content.readuntil(b"\n\n") == b"data: first\n\n"
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(resp.read(), 10)
    await asyncio.wait_for(up.handler_ended.wait(), 5)  # the silent replica's connection was closed too
    assert any(k[2] == "stream" for k in proxy.metrics.upstream_failures)


@pytest.mark.parametrize("path", ["/stall", "/slow"])
async def test_client_disconnect_reaches_the_replica_within_a_second(make_proxy, serve, upstreams, path):
    up = await upstreams("a")
    proxy = await make_proxy()
    table = make_table(port=free_port(), routes=[up.target()])
    url = await serve(proxy, table)
    async with aiohttp.ClientSession() as client:
        if path == "/stall":
            resp = await client.get(url + path, headers=auth(table.endpoint_id))
            await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 10)
            closed_at = time.monotonic()
            resp.close()
        else:
            task = asyncio.create_task(client.get(url + path, headers=auth(table.endpoint_id)))
            await eventually(lambda: up.hits == 1, what="request reached the replica")
            closed_at = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    await asyncio.wait_for(up.handler_ended.wait(), 5)
    assert up.handler_cancelled
    assert time.monotonic() - closed_at < 1.0
