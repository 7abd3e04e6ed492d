"""CORS pre-flights are answered by the proxy from the endpoint's ``cors_allowed_origins``, never forwarded, and
nothing unauthenticated reaches a private endpoint's replica, whatever the method, on either path."""

from __future__ import annotations

import asyncio
import json
import uuid

from tests.appproxy import conftest as appproxy_fixtures
from tests.appproxy.appproxy_testkit import RawServer, auth, free_port, make_table

# the app proxy tests' fixtures: a MemoryStore, real replicas, real AppProxy objects on real ports, a client
store, upstreams, make_proxy, serve, http = (appproxy_fixtures.store, appproxy_fixtures.upstreams,
                                             appproxy_fixtures.make_proxy, appproxy_fixtures.serve,
                                             appproxy_fixtures.http)

ORIGIN = "https://app.example.com"
PREFLIGHT = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, content-type"}


def cors_table(port: int, routes: list, origins: list[str], **kwargs):
    table = make_table(port=port, routes=routes, **kwargs)
    return table.model_copy(update={"cors_allowed_origins": origins})


async def test_preflight_is_never_forwarded_and_refused_by_default(make_proxy, serve, upstreams, http):
    up = await upstreams("a")
    proxy = await make_proxy()
    for public in (False, True):
        table = make_table(port=free_port(), routes=[up.target()], open_to_public=public)
        url = await serve(proxy, table)
        # the hostile case of the issue: a pre-flight carrying a body, for a private replica
        async with http.options(url + "/v1/chat/completions", headers=PREFLIGHT, data=b"x" * 200_000) as resp:
            assert resp.status == 403, resp.status
            assert "Access-Control-Allow-Origin" not in resp.headers
            assert resp.headers["Content-Type"].startswith("application/problem+json")
        async with http.options(url + "/v1/chat/completions", headers=PREFLIGHT) as resp:
            assert resp.status == 403
            assert "Access-Control-Allow-Origin" not in resp.headers
    assert up.hits == 0


async def test_preflight_from_an_allowed_origin_is_answered_by_the_proxy(make_proxy, serve, upstreams, http):
    up = await upstreams("a")
    proxy = await make_proxy()
    table = cors_table(free_port(), [up.target()], [ORIGIN, "http://localhost:3000"])
    url = await serve(proxy, table)
    async with http.options(url + "/v1/chat/completions", headers=PREFLIGHT) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
        assert "authorization" in resp.headers["Access-Control-Allow-Headers"].lower()
        assert int(resp.headers["Access-Control-Max-Age"]) > 0
        assert "Origin" in resp.headers["Vary"]
        assert "Access-Control-Allow-Credentials" not in resp.headers
    other = {**PREFLIGHT, "Origin": "https://evil.example.net"}
    async with http.options(url + "/x", headers=other) as resp:
        assert resp.status == 403
        assert "Access-Control-Allow-Origin" not in resp.headers
    # origins compare exactly (scheme, host and port), case-insensitively
    for origin in ("http://app.example.com", "https://app.example.com:8443", "https://app.example.com.evil.net",
                   "null"):
        async with http.options(url + "/x", headers={**PREFLIGHT, "Origin": origin}) as resp:
            assert resp.status == 403, origin
    async with http.options(url + "/x", headers={**PREFLIGHT, "Origin": "HTTPS://APP.EXAMPLE.COM"}) as resp:
        assert resp.status == 204
    # a refused method is not granted
    async with http.options(url + "/x", headers={**PREFLIGHT, "Access-Control-Request-Method": "TRACE"}) as resp:
        assert resp.status == 403
    assert up.hits == 0


async def test_actual_requests_get_cors_headers_only_for_allowed_origins(make_proxy, serve, upstreams, http):
    up = await upstreams("a")
    proxy = await make_proxy()
    table = cors_table(free_port(), [up.target()], [ORIGIN])
    url = await serve(proxy, table)
    headers = {**auth(table.endpoint_id), "Origin": ORIGIN}
    for path in ("/echo", "/sse", "/chunked"):  # fast path (sized), ordinary path (streams)
        up.release.set()
        async with http.get(url + path, headers=headers) as resp:
            assert resp.status == 200
            assert resp.headers.getall("Access-Control-Allow-Origin") == [ORIGIN], path
            assert "Origin" in resp.headers.getall("Vary"), path
            await resp.read()
    async with http.post(url + "/echo", headers=headers, data=b"y" * 100_000) as resp:  # ordinary path
        assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    async with http.get(url + "/echo", headers={**headers, "Origin": "https://evil.example.net"}) as resp:
        assert resp.status == 200
        assert "Access-Control-Allow-Origin" not in resp.headers
        assert "Origin" in resp.headers.getall("Vary")
    # the proxy's own answers carry them too (a browser can read the 401)
    async with http.get(url + "/echo", headers={"Origin": ORIGIN}) as resp:
        assert resp.status == 401
        assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    # an endpoint without a CORS list adds nothing
    plain = make_table(port=free_port(), routes=[up.target()])
    plain_url = await serve(proxy, plain)
    async with http.get(plain_url + "/echo", headers={**auth(plain.endpoint_id), "Origin": ORIGIN}) as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers
        assert "Vary" not in resp.headers


class CorsReplica(RawServer):
    """A replica that grants every origin itself (as vLLM's default ``--allowed-origins ["*"]`` does)."""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readuntil(b"\r\n\r\n"):
            body = b'{"ok": true}'
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Access-Control-Allow-Origin: *\r\nAccess-Control-Allow-Credentials: true\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()


async def test_the_replicas_own_cors_headers_are_not_relayed(make_proxy, serve, http):
    replica = await CorsReplica().start()
    try:
        proxy = await make_proxy()
        table = cors_table(free_port(), [replica.target()], [ORIGIN])
        url = await serve(proxy, table)
        for origin in (ORIGIN, "https://evil.example.net"):
            async with http.get(url + "/x", headers={**auth(table.endpoint_id), "Origin": origin}) as resp:
                assert resp.status == 200
                expected = [ORIGIN] if origin == ORIGIN else []
                assert resp.headers.getall("Access-Control-Allow-Origin", []) == expected
                assert "Access-Control-Allow-Credentials" not in resp.headers
    finally:
        await replica.stop()


UNAUTHENTICATED = [
    ("GET", {}), ("HEAD", {}), ("POST", {}), ("PUT", {}), ("DELETE", {}), ("PATCH", {}), ("OPTIONS", {}),
    ("OPTIONS", {"Origin": ORIGIN}), ("OPTIONS", {"Access-Control-Request-Method": "POST"}),
    ("PROPFIND", {}), ("MKCALENDAR", {}), ("QUERY", PREFLIGHT), ("GET", PREFLIGHT), ("POST", PREFLIGHT),
]
# methods the request parser (llhttp) does not know, or lower-case ones, are refused before any handler runs
UNPARSEABLE = [("FOO", {}), ("options", PREFLIGHT), ("get", {})]


async def raw_status(url: str, method: str, headers: dict[str, str], body: bytes) -> int:
    """Send one request as written (no normalisation) and return the status code of the answer."""
    port = int(url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(f"{method} /echo HTTP/1.1\r\nHost: x\r\n{lines}Content-Length: {len(body)}\r\n\r\n".encode()
                     + body)
        status_line = await asyncio.wait_for(reader.readline(), 10)
        return int(status_line.split()[1])
    finally:
        writer.close()


async def test_nothing_unauthenticated_reaches_a_private_replica(make_proxy, serve, upstreams, http):
    up = await upstreams("a")
    proxy = await make_proxy()
    table = cors_table(free_port(), [up.target()], [ORIGIN])
    url = await serve(proxy, table)
    taken = proxy.fastpath.taken
    # no body (the fast path looks at these first), then a body too large for it (the ordinary path only)
    for body in (None, b"z" * 100_000):
        for method, headers in UNAUTHENTICATED:
            for extra in ({}, {"Authorization": "Bearer not-a-token"}, auth(uuid.uuid4())):
                async with http.request(method, url + "/echo", headers={**headers, **extra}, data=body) as resp:
                    assert resp.status == 401, (method, headers, extra, resp.status)
        for method, headers in UNPARSEABLE:  # raw: aiohttp's client would upper-case the method
            assert await raw_status(url, method, headers, body or b"") == 400, method
        for extra in ({}, {"Authorization": "Bearer not-a-token"}):  # a pre-flight, token or not
            async with http.options(url + "/echo", headers={**PREFLIGHT, **extra}, data=body) as resp:
                assert resp.status == 204
    assert up.hits == 0
    assert proxy.fastpath.taken == taken
    # and the authenticated requests still pass, on both paths
    async with http.get(url + "/echo", headers=auth(table.endpoint_id)) as resp:
        assert resp.status == 200
    async with http.request("PROPFIND", url + "/echo", headers=auth(table.endpoint_id), data=b"z" * 100_000) as resp:
        assert resp.status == 200
    async with http.options(url + "/echo", headers=auth(table.endpoint_id)) as resp:  # a plain OPTIONS
        assert resp.status == 200
    assert up.hits == 3


async def test_unknown_cors_entries_are_ignored_not_fatal(make_proxy, serve, upstreams, http):
    up = await upstreams("a")
    proxy = await make_proxy()
    table = cors_table(free_port(), [up.target()], ["not an origin", "ftp://x.example", "null", ORIGIN + "/"])
    url = await serve(proxy, table)
    async with http.options(url + "/x", headers={**PREFLIGHT, "Origin": "null"}) as resp:
        assert resp.status == 403
    async with http.options(url + "/x", headers=PREFLIGHT) as resp:  # a trailing slash is forgiven
        assert resp.status == 204
    async with http.get(url + "/echo", headers=auth(table.endpoint_id)) as resp:
        assert resp.status == 200


async def test_route_table_carries_cors_allowed_origins():
    from common.protocol import RouteTable

    endpoint_id = str(uuid.uuid4())
    raw = json.dumps({"endpoint_id": endpoint_id, "name": "x", "cors_allowed_origins": ["https://a.example"]})
    assert RouteTable.model_validate_json(raw).cors_allowed_origins == ["https://a.example"]
    raw = json.dumps({"endpoint_id": endpoint_id, "name": "x"})  # what an older manager publishes
    assert RouteTable.model_validate_json(raw).cors_allowed_origins == []

