"""The fast path (appproxy.fastpath) on real sockets: a request that finds an idle pooled connection is answered
from callbacks; whatever it cannot finish (streams, errors, a client leaving) ends as on the ordinary path."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import pytest
from aiohttp import web

from tests.appproxy.appproxy_testkit import RawServer, auth, eventually, free_port, make_table


async def warm(http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> None:
    """One request, so that the proxy has an idle connection to the replica (the fast path needs one)."""
    async with http.get(url + "/echo", headers=headers or {}) as resp:
        assert resp.status == 200


async def test_common_requests_take_the_fast_path(make_proxy, serve, upstreams, http):
    up = await upstreams("a")
    proxy = await make_proxy()
    table = make_table(port=free_port(), routes=[up.target()])
    url = await serve(proxy, table)
    headers = auth(table.endpoint_id)
    await warm(http, url, headers)
    for i in range(5):
        async with http.post(url + "/echo?x=1", data=f"b{i}".encode(), headers={**headers, "Cookie": "c=1"}) as resp:
            assert resp.status == 200
            seen = await resp.json()
            assert seen["body"] == f"b{i}" and seen["path_qs"] == "/echo?x=1"
            assert "Cookie" not in seen["headers"] and "Authorization" not in seen["headers"]
            assert seen["headers"]["X-Forwarded-For"] == ["127.0.0.1"]
    async with http.get(url + "/echo") as resp:  # no token: declined, answered by the ordinary path
        assert resp.status == 401
    assert proxy.fastpath.taken == 5 and proxy.fastpath.handed_over == 0
    endpoint, route = str(table.endpoint_id), str(table.routes[0].route_id)
    assert proxy.metrics.requests[(endpoint, route, "2xx")] == 6
    assert proxy.metrics.requests[(endpoint, "-", "4xx")] == 1
    assert sum(proxy.metrics.durations[(endpoint, route)]) == 6
    assert not proxy.metrics.in_flight and not proxy.metrics.route_in_flight and not proxy._admitted
    assert not proxy.forwarder._in_flight


async def test_streams_and_errors_are_handed_over(make_proxy, serve, upstreams, http):
    up = await upstreams("a")
    proxy = await make_proxy()
    table = make_table(port=free_port(), routes=[up.target()], open_to_public=True)
    url = await serve(proxy, table)
    await warm(http, url)
    async with http.get(url + "/sse") as resp:  # a stream: relayed chunk by chunk by the ordinary code
        assert resp.headers["X-Accel-Buffering"] == "no"
        assert await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 10) == b"data: 1\n\n"
        assert not up.second_sent
        up.release.set()
        assert (await asyncio.wait_for(resp.content.read(), 10)).strip() == b"data: 2"
    await warm(http, url)
    async with http.get(url + "/status/503") as resp:  # a 5xx is relayed (and counts as a failure)
        assert resp.status == 503
    assert proxy.fastpath.taken == 3 and proxy.fastpath.handed_over == 1
    assert any(k[2] == "5xx" for k in proxy.metrics.upstream_failures)
    assert not proxy.metrics.in_flight and not proxy._admitted and not proxy.forwarder._in_flight


async def test_idle_connection_closed_by_the_replica_is_retried(make_proxy, serve, upstreams, http):
    """The replica restarts while the proxy holds an idle connection to it: the stale connection is not used
    (or, closed under the request, the GET is sent again on a new one); no replica failure either way."""
    up = await upstreams("a")
    proxy = await make_proxy()
    table = make_table(port=free_port(), routes=[up.target()], open_to_public=True)
    url = await serve(proxy, table)
    await warm(http, url)
    port = up.port
    await up.stop()
    up._runner = None
    app = web.Application()
    app.router.add_route("*", "/{path:.*}", up._dispatch)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with http.get(url + "/echo") as resp:
            assert resp.status == 200
        assert not proxy.metrics.upstream_failures
    finally:
        await runner.cleanup()


async def test_read_timeout_on_the_fast_path_is_504(make_proxy, serve, upstreams, http):
    up = await upstreams("a")
    proxy = await make_proxy(proxy={"upstream_read_timeout": 0.3})
    table = make_table(port=free_port(), routes=[up.target()], open_to_public=True)
    url = await serve(proxy, table)
    await warm(http, url)
    async with http.get(url + "/slow") as resp:
        assert resp.status == 504
    assert proxy.fastpath.handed_over == 1
    await asyncio.wait_for(up.handler_ended.wait(), 5)  # the silent replica's connection was closed
    assert any(k[2] == "timeout" for k in proxy.metrics.upstream_failures)


@pytest.mark.parametrize("path", ["/slow", "/stall"])
async def test_client_leaving_during_the_fast_path_reaches_the_replica(make_proxy, serve, upstreams, path):
    up = await upstreams("a")
    proxy = await make_proxy()
    table = make_table(port=free_port(), routes=[up.target()])
    url = await serve(proxy, table)
    async with aiohttp.ClientSession() as client:
        await warm(client, url, auth(table.endpoint_id))
        task = asyncio.create_task(client.get(url + path, headers=auth(table.endpoint_id)))
        await eventually(lambda: up.hits == 2, what="request reached the replica")
        if path == "/stall":
            resp = await task
            await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 10)
        closed_at = time.monotonic()
        if path == "/stall":
            resp.close()
        else:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    await asyncio.wait_for(up.handler_ended.wait(), 5)
    assert up.handler_cancelled and time.monotonic() - closed_at < 1.0
    assert proxy.fastpath.taken == 1  # the warm-up request went the ordinary way (no idle connection yet)
    await eventually(lambda: proxy.metrics.client_disconnects[str(table.endpoint_id)] == 1, what="disconnect")
    await eventually(lambda: not proxy.metrics.in_flight and not proxy._admitted, what="counters released")
    assert not proxy.forwarder._in_flight


class OneShotUpstream(RawServer):
    """Answers the first request on each connection (keep-alive), then closes the connection when the next one
    arrives, without answering: an idle pooled connection that closes under a request."""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if b"content-length: " in head.lower():
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok")
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")  # the second request: dropped
        except Exception:
            pass
        writer.close()


async def test_connection_closed_under_a_fast_request(make_proxy, serve, http):
    up = await OneShotUpstream().start()
    try:
        proxy = await make_proxy()
        table = make_table(port=free_port(), routes=[up.target()], open_to_public=True)
        url = await serve(proxy, table)
        async with http.get(url + "/") as resp:  # ordinary path; leaves an idle connection
            assert await resp.read() == b"ok"
        async with http.get(url + "/") as resp:  # fast path; closed under it; sent again on a new connection
            assert resp.status == 200 and await resp.read() == b"ok"
        assert proxy.fastpath.taken == 1 and proxy.fastpath.handed_over == 1
        assert not proxy.metrics.upstream_failures and up.connections == 2
        async with http.post(url + "/", data=b"x") as resp:  # not idempotent: a failure, no other route: 502
            assert resp.status == 502
        assert proxy.fastpath.taken == 2
        assert any(k[2] == "reset" for k in proxy.metrics.upstream_failures)
        assert not proxy.metrics.in_flight and not proxy._admitted and not proxy.forwarder._in_flight
    finally:
        await up.stop()


async def test_access_log_covers_both_paths(make_proxy, serve, upstreams, http, caplog):
    up = await upstreams("a")
    proxy = await make_proxy(proxy={"access_log": True})
    table = make_table(port=free_port(), routes=[up.target()], open_to_public=True)
    url = await serve(proxy, table)
    with caplog.at_level(logging.INFO, logger="aiohttp.access"):
        await warm(http, url)  # ordinary path
        async with http.get(url + "/echo?fast=1") as resp:  # fast path
            assert resp.status == 200
    assert proxy.fastpath.taken == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert any('"GET /echo HTTP/1.1" 200' in line for line in lines), lines
    assert any('"GET /echo?fast=1 HTTP/1.1" 200' in line for line in lines), lines
