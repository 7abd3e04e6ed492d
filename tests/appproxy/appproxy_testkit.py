"""Helpers for the app proxy tests: real upstream servers, free ports, deadline-based waiting.

Imported as ``tests.appproxy.appproxy_testkit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import struct
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Self

from aiohttp import web

from common.protocol import RouteTable, RouteTarget
from common.store import ROUTES_PREFIX, MemoryStore
from common.tokens import mint_endpoint_token

SECRET = "appproxy-test-secret-0123456789abcdef"
OWNER = uuid.UUID("00000000-0000-0000-0000-0000000000aa")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def token_for(endpoint_id: uuid.UUID, *, ttl: float = 3600, token_id: str | None = None,
              secret: str = SECRET) -> str:
    token, _ = mint_endpoint_token(secret, endpoint_id, OWNER, time.time() + ttl, token_id=token_id)
    return token


def auth(endpoint_id: uuid.UUID, scheme: str = "Bearer", **kwargs: Any) -> dict[str, str]:
    return {"Authorization": f"{scheme} {token_for(endpoint_id, **kwargs)}"}


async def eventually(predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0,
                     interval: float = 0.02, what: str = "condition") -> None:
    """Poll until ``predicate`` holds; fail after ``timeout`` seconds (a deadline, not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


async def port_accepts(port: int, host: str = "127.0.0.1") -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2.0)
    except (TimeoutError, OSError):
        return False
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True


class Upstream:
    """One replica: a real aiohttp server on 127.0.0.1 with a random port.

    ``/echo``: what it received as JSON; ``/sse`` and ``/chunked``: one chunk, wait for :attr:`release`, a second
    chunk; ``/slow``: sleeps long (records its cancellation); ``/gzip``: a gzip-encoded body;
    ``/hold``: waits for :attr:`release` then answers. Set :attr:`fail_status` to answer everything with it.
    ``/drip?n=N&interval=S``: N chunks S seconds apart; ``/stall``: one chunk, then silence (records its end);
    ``/die-after-first``: one chunk, then the connection is dropped; ``/metrics``: :attr:`metrics_text`.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.hits = 0
        self.requests: list[dict[str, Any]] = []
        self.fail_status: int | None = None
        self.metrics_text = "# TYPE up gauge\nup 1\n"
        self.release = asyncio.Event()
        self.first_sent = asyncio.Event()
        self.second_sent = False
        self.handler_ended = asyncio.Event()  # a streaming/slow/hold handler finished, was cancelled or lost
        self.handler_cancelled = False
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> Upstream:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{path:.*}", self._dispatch)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site.port
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def target(self, ratio: float = 1.0, route_id: uuid.UUID | None = None) -> RouteTarget:
        return RouteTarget(route_id=route_id or uuid.uuid4(), host="127.0.0.1", port=self.port,
                           traffic_ratio=ratio)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        body = await request.read()
        seen = {"name": self.name, "method": request.method, "path_qs": request.raw_path,
                "headers": {k: request.headers.getall(k) for k in request.headers},
                "body": body.decode(errors="replace")}
        self.requests.append(seen)
        if self.fail_status is not None:
            return web.json_response({"error": "failing on purpose", "name": self.name}, status=self.fail_status)
        path = request.path
        if path == "/metrics":
            return web.Response(text=self.metrics_text, content_type="text/plain")
        if path == "/drip":
            n, interval = int(request.query.get("n", "3")), float(request.query.get("interval", "0.1"))
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for i in range(n):
                if i:
                    await asyncio.sleep(interval)
                await response.write(f"data: {i}\n\n".encode())
            await response.write_eof()
            return response
        if path in ("/stall", "/die-after-first"):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            try:
                await response.prepare(request)
                await response.write(b"data: first\n\n")
                self.first_sent.set()
                if path == "/die-after-first":
                    assert request.transport is not None
                    request.transport.abort()
                    return response
                await asyncio.sleep(60)
                return response
            except asyncio.CancelledError:
                self.handler_cancelled = True
                raise
            finally:
                self.handler_ended.set()
        if path == "/sse":
            return await self._stream(request, "text/event-stream", [b"data: 1\n\n", b"data: 2\n\n"])
        if path == "/chunked":
            return await self._stream(request, "application/json", [b'{"part": 1}\n', b'{"part": 2}\n'])
        if path in ("/slow", "/hold"):
            try:
                if path == "/slow":
                    await asyncio.sleep(60)
                else:
                    await self.release.wait()
                return web.json_response({"name": self.name})
            except asyncio.CancelledError:
                self.handler_cancelled = True
                raise
            finally:
                self.handler_ended.set()
        if path == "/gzip":
            payload = json.dumps({"name": self.name, "text": "x" * 1000}).encode()
            return web.Response(body=gzip.compress(payload), content_type="application/json",
                                headers={"Content-Encoding": "gzip"})
        if path.startswith("/status/"):
            return web.json_response({"name": self.name}, status=int(path.rsplit("/", 1)[1]))
        return web.json_response(seen)

    async def _stream(self, request: web.Request, content_type: str, chunks: list[bytes]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": content_type})
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            await response.write(chunks[0])
            self.first_sent.set()
            await self.release.wait()
            self.second_sent = True
            await response.write(chunks[1])
            await response.write_eof()
            return response
        except asyncio.CancelledError:
            self.handler_cancelled = True
            raise
        finally:
            self.handler_ended.set()


def make_table(endpoint_id: uuid.UUID | None = None, *, port: int | None, routes: list[RouteTarget],
               open_to_public: bool = False, revoked: list[str] | None = None, name: str = "svc",
               subdomain: str | None = None) -> RouteTable:
    return RouteTable(endpoint_id=endpoint_id or uuid.uuid4(), name=name, port=port, open_to_public=open_to_public,
                      routes=routes, revoked_token_ids=revoked or [], updated_at=time.time(), subdomain=subdomain)


async def publish(store: MemoryStore, table: RouteTable) -> None:
    await store.put(ROUTES_PREFIX + str(table.endpoint_id), table.model_dump_json())


async def unpublish(store: MemoryStore, endpoint_id: uuid.UUID) -> None:
    await store.delete(ROUTES_PREFIX + str(endpoint_id))


class RawServer:
    """A "replica" that is a plain asyncio TCP server on 127.0.0.1 (a random port), for answers no HTTP server
    would give; subclasses say what to do with each connection in ``_handle``."""

    def __init__(self) -> None:
        self.connections = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        await self._handle(reader, writer)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def target(self) -> RouteTarget:
        return RouteTarget(route_id=uuid.uuid4(), host="127.0.0.1", port=self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class ResetServer(RawServer):
    """A "replica" that accepts connections and resets them as soon as the request arrives (RST, no response)."""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader.read(1), 5)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
