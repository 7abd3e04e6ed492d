"""The proxy's own HTTP/1.1 server (appproxy.httpserver) on real sockets: what goes on the wire, keep-alive,
pipelining, bad requests, unread bodies, idle timeout. Raw sockets on the client side, so nothing a client
library smooths over goes unnoticed."""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

import pytest
from aiohttp import web

from appproxy.httpserver import HttpServer
from tests.appproxy.appproxy_testkit import RawServer, auth, free_port, make_table


class RawUpstream(RawServer):
    """A replica answering every request with one fixed response (``head`` + ``body``)."""

    def __init__(self, head: bytes, body: bytes) -> None:
        super().__init__()
        self.response = head + body
        self.requests: list[bytes] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while head := await reader.readuntil(b"\r\n\r\n"):
                self.requests.append(head)
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                if length:
                    await reader.readexactly(int(length.group(1)))
                writer.write(self.response)
                await writer.drain()
        writer.close()


async def public_endpoint(make_proxy: Any, serve: Any, upstream: Any) -> int:
    """A proxy serving a public endpoint whose one route is ``upstream``; returns the endpoint's port."""
    proxy = await make_proxy()
    table = make_table(port=free_port(), routes=[upstream.target()], open_to_public=True)
    await serve(proxy, table)
    assert table.port is not None
    return table.port


@pytest.fixture
async def raw_upstreams():
    started: list[RawUpstream] = []

    async def make(head: bytes, body: bytes) -> RawUpstream:
        upstream = await RawUpstream(head, body).start()
        started.append(upstream)
        return upstream

    yield make
    for upstream in started:
        await upstream.stop()


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, list[str]], bytes]:
    """One response with a Content-Length: (status line, headers by lower-case name, body)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.setdefault(name.lower(), []).append(value.strip())
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", ["0"])[0])), 10)
    return lines[0].encode(), headers, body


async def closed(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(), 10) == b""


async def test_relayed_response_on_the_wire(make_proxy, serve, raw_upstreams):
    """Header lines as the replica sent them, hop-by-hop ones dropped, then what aiohttp's web.Response adds:
    Content-Type when missing, Date, Server; Connection as HTTP version and keep-alive ask."""
    up = await raw_upstreams(b"HTTP/1.1 201 Made It\r\nX-Mixed-Case: A b\r\nContent-Length: 5\r\n"
                             b"Keep-Alive: timeout=5\r\nConnection: keep-alive\r\nSet-Cookie: a=1\r\n"
                             b"Set-Cookie: b=2\r\n\r\n", b"hello")
    port = await public_endpoint(make_proxy, serve, up)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert status == b"HTTP/1.1 201 Made It" and body == b"hello"
        assert headers["x-mixed-case"] == ["A b"] and headers["set-cookie"] == ["a=1", "b=2"]
        assert headers["content-type"] == ["application/octet-stream"]
        assert len(headers["date"]) == 1 and headers["server"][0].startswith("Python/")
        assert "connection" not in headers and "keep-alive" not in headers
        # HTTP/1.0 asking for keep-alive gets it, and says so
        writer.write(b"GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert status == b"HTTP/1.0 201 Made It" and headers["connection"] == ["keep-alive"]
        # Connection: close is answered, then the connection ends
        writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert headers["connection"] == ["close"] and body == b"hello"
        assert await closed(reader)
    finally:
        writer.close()
    # HTTP/1.0 without keep-alive: no Connection header, closed after the response
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /x HTTP/1.0\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert status.startswith(b"HTTP/1.0 201") and "connection" not in headers
        assert await closed(reader)
    finally:
        writer.close()


async def test_connection_header_naming_end_to_end_headers(make_proxy, serve, raw_upstreams):
    up = await raw_upstreams(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Hop: 1\r\nX-Kept: 2\r\n"
                             b"Connection: X-Hop\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nServer: up/1\r\n"
                             b"Content-Length: 2\r\n\r\n", b"ok")
    port = await public_endpoint(make_proxy, serve, up)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        status, headers, body = await read_response(reader)
    finally:
        writer.close()
    assert status == b"HTTP/1.1 200 OK" and body == b"ok"
    assert "x-hop" not in headers and headers["x-kept"] == ["2"]
    assert headers["date"] == ["Mon, 01 Jan 2024 00:00:00 GMT"] and headers["server"] == ["up/1"]
    assert headers["content-type"] == ["text/plain"]


async def test_pipelined_requests_are_answered_in_order(make_proxy, serve, upstreams):
    up = await upstreams("a")
    port = await public_endpoint(make_proxy, serve, up)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"".join(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n%02d" % i
                              for i in range(40)))  # more than MAX_QUEUED: reading pauses and resumes
        for i in range(40):
            status, _, body = await read_response(reader)
            assert status == b"HTTP/1.1 200 OK"
            assert b'"body": "%02d"' % i in body
    finally:
        writer.close()


async def test_malformed_request_is_400_and_closed(make_proxy, serve, upstreams):
    up = await upstreams("a")
    port = await public_endpoint(make_proxy, serve, up)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert status.startswith(b"HTTP/1.0 400") and headers["content-type"][0].startswith("text/plain")
        assert await closed(reader)
    finally:
        writer.close()
    assert up.hits == 0


async def test_unread_body_is_drained_and_the_connection_reused(make_proxy, serve, upstreams):
    up = await upstreams("a")
    proxy = await make_proxy()
    table = make_table(port=free_port(), routes=[up.target()])
    await serve(proxy, table)
    reader, writer = await asyncio.open_connection("127.0.0.1", table.port)
    try:
        # refused before the body is read; the body arrives afterwards, is skipped, the connection goes on
        writer.write(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
        status, _, _ = await read_response(reader)
        assert status.startswith(b"HTTP/1.1 401")
        writer.write(b"y" * 100000)
        token = auth(table.endpoint_id)["Authorization"].encode()
        writer.write(b"GET /echo HTTP/1.1\r\nHost: a\r\nAuthorization: %s\r\n\r\n" % token)
        status, _, body = await read_response(reader)
        assert status == b"HTTP/1.1 200 OK" and b'"name": "a"' in body
    finally:
        writer.close()
    assert up.hits == 1


async def test_idle_keepalive_connections_are_closed_and_handler_errors_are_500():
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        if request.path == "/boom":
            raise RuntimeError("boom")
        return web.Response(text="hi")

    server = HttpServer(handler, keepalive_timeout=0.3)
    listener = await server.listen("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert status == b"HTTP/1.1 200 OK" and body == b"hi"
        assert await closed(reader)  # idle for the keep-alive timeout
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(b"GET /boom HTTP/1.1\r\nHost: a\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert status == b"HTTP/1.1 500 Internal Server Error" and headers["connection"] == ["close"]
        assert await closed(reader)
        writer.close()
    finally:
        await server.shutdown(1.0)
    assert not server.connections


async def test_shutdown_lets_a_request_finish_then_cancels():
    release = asyncio.Event()
    cancelled = asyncio.Event()

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        if request.path == "/forever":
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise
        await release.wait()
        return web.Response(text="done")

    server = HttpServer(handler)
    listener = await server.listen("127.0.0.1", 0)
    r1, w1 = await asyncio.open_connection("127.0.0.1", listener.port)
    r2, w2 = await asyncio.open_connection("127.0.0.1", listener.port)
    r3, w3 = await asyncio.open_connection("127.0.0.1", listener.port)  # idle: closed at once
    w1.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    w2.write(b"GET /forever HTTP/1.1\r\nHost: a\r\n\r\n")
    await asyncio.sleep(0.1)
    stopping = asyncio.create_task(server.shutdown(0.5))
    assert await closed(r3)
    release.set()
    status, _, body = await read_response(r1)
    assert status == b"HTTP/1.1 200 OK" and body == b"done"
    await asyncio.wait_for(stopping, 5)
    assert cancelled.is_set() and await closed(r2)
    for w in (w1, w2, w3):
        w.close()


async def test_a_client_that_does_not_read_is_not_answered_without_bound(make_proxy, serve, raw_upstreams):
    """Pipelined requests from a client that never reads its answers: the proxy stops taking requests once the
    answers back up (as aiohttp's drain did), instead of buffering every answer."""
    up = await raw_upstreams(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 60000\r\n\r\n",
                             b"z" * 60000)
    port = await public_endpoint(make_proxy, serve, up)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        await read_response(reader)  # warm: an idle pooled connection, so the next ones can go the fast way
        writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n" * 2000)  # 117 MB of answers, never read
        await asyncio.sleep(2)
        assert len(up.requests) < 1000, len(up.requests)
        for _ in range(20):  # reading again lets it go on
            await read_response(reader)
    finally:
        writer.close()
