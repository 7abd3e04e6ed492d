"""Request bodies cannot grow the app proxy without bound: small bodies are buffered (for a retry) within a
process-wide budget, large ones are streamed to the replica, a stalled upload times out. The RSS checks run the
proxy as a real subprocess (``bench/_lib/proxy_server.py``: the real AppProxy on a MemoryStore)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.appproxy import conftest as appproxy_fixtures
from tests.appproxy.appproxy_testkit import RawServer, auth, eventually, free_port, make_table

store, upstreams, make_proxy, serve, http = (appproxy_fixtures.store, appproxy_fixtures.upstreams,
                                             appproxy_fixtures.make_proxy, appproxy_fixtures.serve,
                                             appproxy_fixtures.http)

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
CHUNK = memoryview(b"m" * MiB)


class Sink(RawServer):
    """A replica that reads each request's body (Content-Length or chunked) and discards it, answering with its
    size and SHA-256; with ``stall`` it accepts and never reads."""

    def __init__(self, stall: bool = False) -> None:
        super().__init__()
        self.stall = stall
        self.bodies: list[tuple[int, str]] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.stall:
                await asyncio.sleep(60)
                return
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").lower().split("\r\n")
                length = next((int(x.split(":")[1]) for x in lines if x.startswith("content-length:")), None)
                digest, size = hashlib.sha256(), 0
                if length is not None:
                    while size < length:
                        data = await reader.read(min(MiB, length - size))
                        if not data:
                            return
                        digest.update(data)
                        size += len(data)
                elif any(x.startswith("transfer-encoding:") and "chunked" in x for x in lines):
                    while (n := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)) > 0:
                        data = await reader.readexactly(n)
                        digest.update(data)
                        size += n
                        await reader.readexactly(2)
                    await reader.readuntil(b"\r\n")
                self.bodies.append((size, digest.hexdigest()))
                body = json.dumps({"size": size, "sha256": digest.hexdigest()}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            return
        finally:
            writer.close()


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@contextlib.asynccontextmanager
async def proxy_process(routes: list[dict], proxy: dict | None = None) -> AsyncIterator[tuple[int, int]]:
    """The proxy as a subprocess serving one public endpoint; yields (port, pid)."""
    port = free_port()
    table = {"endpoint_id": str(uuid.uuid4()), "name": "mem", "port": port, "open_to_public": True, "routes": routes}
    tables = Path(f"/tmp/moorage-sec-tables-{port}.json")
    tables.write_text(json.dumps([table]))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "bench/_lib/proxy_server.py"), "--tables", str(tables),
        "--proxy", json.dumps({"max_concurrency_per_endpoint": 256, "shutdown_timeout": 0.5, **(proxy or {})}),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip() == b"READY", line
        yield port, proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 10)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        tables.unlink(missing_ok=True)


async def upload(port: int, method: str, size: int, headers: str = "", chunked: bool = False) -> int | None:
    """Send a ``size``-byte body (1 MiB writes, waiting for the socket); the answer's status, or None if none
    came (connection closed or reset under us)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
        writer.write(f"{method} /upload HTTP/1.1\r\nHost: x\r\n{headers}{framing}\r\n\r\n".encode())
        sent = 0
        while sent < size:
            n = min(MiB, size - sent)
            writer.write(b"%x\r\n%s\r\n" % (n, CHUNK[:n]) if chunked else CHUNK[:n])
            await writer.drain()
            sent += n
        if chunked:
            writer.write(b"0\r\n\r\n")
        status_line = await asyncio.wait_for(reader.readline(), 30)
        return int(status_line.split()[1]) if status_line else None
    except ConnectionError:
        return None
    finally:
        writer.close()


@pytest.mark.parametrize("mode", ["stalled replica", "reading replica"])
async def test_concurrent_large_bodies_do_not_grow_the_proxy_process(mode: str):
    """The issue's case: 16 requests with 31 MiB bodies grew the process by ~500 MiB. With the replica not
    reading, the uploads stall behind back-pressure; with it reading, they stream through."""
    sink = await Sink(stall=mode == "stalled replica").start()
    try:
        async with proxy_process([{"route_id": str(uuid.uuid4()), "host": "127.0.0.1", "port": sink.port}]) as (
                port, pid):
            if mode == "reading replica":
                assert await upload(port, "POST", 2 * MiB) == 200  # warm: every code path imported and used
                sink.bodies.clear()
            before = rss_kib(pid, "VmRSS")
            tasks = [asyncio.create_task(upload(port, method, 31 * MiB, chunked=i % 4 == 3))
                     for i, method in enumerate(["POST", "PUT", "OPTIONS", "PATCH"] * 4)]
            done, pending = await asyncio.wait(tasks, timeout=20 if mode == "reading replica" else 3)
            grown = (rss_kib(pid, "VmHWM") - before) // 1024
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if mode == "reading replica":
                assert not pending
                assert all(t.result() == 200 for t in done), [t.result() for t in done]
                assert sorted(sink.bodies) == [(31 * MiB, hashlib.sha256(b"m" * 31 * MiB).hexdigest())] * 16
            print(f"{mode}: peak RSS grew by {grown} MiB")
            assert grown < 64, f"the proxy process grew by {grown} MiB (peak RSS)"
    finally:
        await sink.stop()


async def test_preflights_with_large_bodies_are_not_read():
    sink = await Sink().start()
    try:
        async with proxy_process([{"route_id": str(uuid.uuid4()), "host": "127.0.0.1", "port": sink.port}]) as (
                port, pid):
            before = rss_kib(pid, "VmRSS")
            preflight = "Origin: https://a.example\r\nAccess-Control-Request-Method: POST\r\n"
            statuses = await asyncio.gather(*(upload(port, "OPTIONS", 31 * MiB, preflight) for _ in range(16)))
            assert set(statuses) <= {403, None}, statuses  # answered (and closed) without reading the body
            assert (rss_kib(pid, "VmHWM") - before) // 1024 < 32
            assert sink.connections == 0
    finally:
        await sink.stop()


async def test_buffered_bodies_are_accounted_and_capped(make_proxy, serve, upstreams, http):
    """Small bodies are buffered whole (they may be retried); their total is capped process-wide: beyond it,
    503 + Retry-After, never more memory."""
    up = await upstreams("a")
    proxy = await make_proxy(proxy={"retry_buffer_size": 64 * 1024, "max_buffered_body_bytes": 256 * 1024})
    table = make_table(port=free_port(), routes=[up.target()])
    url = await serve(proxy, table)
    budget = proxy.bodies
    seen: list[int] = []

    async def one(size: int) -> tuple[int, str | None]:
        async with http.post(url + "/hold", data=b"b" * size, headers=auth(table.endpoint_id)) as resp:
            seen.append(budget.used)
            return resp.status, resp.headers.get("Retry-After")

    tasks = [asyncio.create_task(one(60_000)) for _ in range(10)]  # 4 fit in 256 KiB, the others are refused
    await eventually(lambda: sum(t.done() for t in tasks) == 6 and up.hits == 4, what="6 refused, 4 held")
    assert budget.used == 4 * 60_000 <= budget.limit
    up.release.set()
    results = await asyncio.gather(*tasks)
    assert sorted(results) == [(200, None)] * 4 + [(503, "2")] * 6
    assert max(seen) <= budget.limit
    await eventually(lambda: budget.used == 0, what="the budget given back")
    # larger than retry_buffer_size: streamed; only a fixed window is accounted for it, whatever its size
    up.release.clear()
    big = asyncio.create_task(one(3 * MiB))
    await eventually(lambda: up.hits == 5, what="the large body forwarded")
    assert 0 < budget.used <= 512 * 1024
    up.release.set()
    assert (await big)[0] == 200
    await eventually(lambda: budget.used == 0, what="the budget given back")


async def test_streamed_bodies_arrive_intact_and_connect_failures_are_still_retried(make_proxy, serve, http):
    sink = await Sink().start()
    try:
        proxy = await make_proxy(proxy={"retry_buffer_size": 64 * 1024})
        dead = {"route_id": uuid.uuid4(), "host": "127.0.0.1", "port": free_port()}  # connection refused
        from common.protocol import RouteTarget

        table = make_table(port=free_port(), routes=[RouteTarget(**dead), sink.target()])
        url = await serve(proxy, table)
        body = os.urandom(3 * MiB)
        for _ in range(4):  # whichever route comes first, the body reaches the live one whole
            async with http.post(url + "/x", data=body, headers=auth(table.endpoint_id)) as resp:
                assert resp.status == 200
                assert await resp.json() == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(body), 100_000):
                yield body[i:i + 100_000]

        async with http.post(url + "/x", data=chunks(), headers=auth(table.endpoint_id)) as resp:  # chunked
            assert resp.status == 200
            assert (await resp.json())["sha256"] == hashlib.sha256(body).hexdigest()
        assert proxy.bodies.used == 0
    finally:
        await sink.stop()


async def test_oversize_bodies_are_413_known_length_or_not(make_proxy, serve, upstreams, http):
    up = await upstreams("a")
    proxy = await make_proxy(proxy={"max_body_size": 2 * MiB, "retry_buffer_size": 64 * 1024})
    table = make_table(port=free_port(), routes=[up.target()], open_to_public=True)
    url = await serve(proxy, table)
    async with http.post(url + "/echo", data=b"x" * (3 * MiB)) as resp:
        assert resp.status == 413

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(30):
            yield b"x" * 100_000

    with contextlib.suppress(Exception):  # the proxy may close while the client is still sending
        async with http.post(url + "/echo", data=chunks()) as resp:
            assert resp.status == 413
    await eventually(lambda: proxy.bodies.used == 0, what="the budget given back")


async def test_a_stalled_body_upload_times_out(make_proxy, serve, upstreams):
    up = await upstreams("a")
    proxy = await make_proxy(proxy={"request_body_timeout": 0.5})
    table = make_table(port=free_port(), routes=[up.target()], open_to_public=True)
    await serve(proxy, table)
    for size in (1000, 5 * MiB):  # buffered, streamed
        reader, writer = await asyncio.open_connection("127.0.0.1", table.port)
        try:
            writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n0123456789" % size)
            started = time.monotonic()
            status_line = await asyncio.wait_for(reader.readline(), 5)
            assert status_line == b"" or int(status_line.split()[1]) in (408, 502), status_line
            assert time.monotonic() - started < 3
            with contextlib.suppress(ConnectionError):
                await asyncio.wait_for(reader.read(), 5)  # and the connection is closed
        finally:
            writer.close()
    await eventually(lambda: proxy.bodies.used == 0, what="the budget given back")
