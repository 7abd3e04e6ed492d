"""Slow and greedy clients at the app proxy, with raw sockets: a request head must arrive within
``request_head_timeout``, an idle keep-alive connection is closed after ``keepalive_timeout``, and one client
address holds at most ``max_connections_per_client`` connections."""

from __future__ import annotations

import asyncio
import contextlib
import time

from appproxy.config import ProxySection
from tests.appproxy import conftest as appproxy_fixtures
from tests.appproxy.appproxy_testkit import free_port, make_table

store, upstreams, make_proxy, serve = (appproxy_fixtures.store, appproxy_fixtures.upstreams,
                                       appproxy_fixtures.make_proxy, appproxy_fixtures.serve)

HEAD = b"GET /echo HTTP/1.1\r\nHost: x\r\n"


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def closed_within(reader: asyncio.StreamReader, timeout: float) -> float:
    """Seconds until the proxy closes the connection (EOF or reset); fails after ``timeout``."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass
    except ConnectionResetError:
        pass
    return time.monotonic() - started


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status = int(head.split()[1])
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    return status, await asyncio.wait_for(reader.readexactly(length), 10)


def close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()


async def public_endpoint(make_proxy, serve, upstreams, **proxy: object) -> tuple[int, object, object]:
    up = await upstreams("a")
    proxy_obj = await make_proxy(proxy=proxy)
    table = make_table(port=free_port(), routes=[up.target()], open_to_public=True)
    await serve(proxy_obj, table)
    return table.port, proxy_obj, up


def test_defaults_are_bounded():
    cfg = ProxySection()
    assert 10 <= cfg.request_head_timeout <= 30
    assert cfg.keepalive_timeout <= 600
    assert 0 < cfg.max_connections_per_client <= 4096


async def test_a_half_sent_request_head_is_closed_after_the_timeout(make_proxy, serve, upstreams):
    port, _, up = await public_endpoint(make_proxy, serve, upstreams, request_head_timeout=0.5,
                                        keepalive_timeout=30.0)
    reader, writer = await connect(port)
    writer.write(HEAD)  # ... and never the blank line
    try:
        elapsed = await closed_within(reader, 5.0)
    finally:
        close(writer)
    assert 0.3 <= elapsed < 3.0, elapsed
    assert up.hits == 0


async def test_a_silent_connection_and_a_dribbled_head_are_closed_too(make_proxy, serve, upstreams):
    port, _, _ = await public_endpoint(make_proxy, serve, upstreams, request_head_timeout=0.5,
                                       keepalive_timeout=30.0)
    reader, writer = await connect(port)  # connects and sends nothing
    try:
        assert await closed_within(reader, 5.0) < 3.0
    finally:
        close(writer)
    # one byte every 0.1 s: every byte is progress, but the head as a whole must arrive in time
    reader, writer = await connect(port)
    started = time.monotonic()
    try:
        for byte in HEAD * 10:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.1)
            if reader.at_eof() or writer.is_closing() or time.monotonic() - started > 5:
                break
        await closed_within(reader, 5.0)
    except ConnectionError:
        pass
    finally:
        close(writer)
    assert time.monotonic() - started < 3.0


async def test_idle_keep_alive_is_closed_but_requests_in_progress_are_not(make_proxy, serve, upstreams):
    port, _, up = await public_endpoint(make_proxy, serve, upstreams, request_head_timeout=0.5,
                                        keepalive_timeout=0.8)
    reader, writer = await connect(port)
    try:
        writer.write(HEAD + b"\r\n")
        assert (await read_response(reader))[0] == 200
        await asyncio.sleep(0.3)  # idle, but less than keepalive_timeout: still usable
        writer.write(HEAD + b"\r\n")
        assert (await read_response(reader))[0] == 200
        elapsed = await closed_within(reader, 5.0)  # then idle past it
        assert 0.5 <= elapsed < 3.0, elapsed
    finally:
        close(writer)
    # a request the replica takes longer than both timeouts to answer is not cut
    reader, writer = await connect(port)
    try:
        writer.write(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(1.5)
        up.release.set()
        assert (await read_response(reader))[0] == 200
    finally:
        close(writer)


async def test_connections_per_client_address_are_capped(make_proxy, serve, upstreams):
    port, proxy, _ = await public_endpoint(make_proxy, serve, upstreams, max_connections_per_client=4)
    held = []
    try:
        for _ in range(4):
            reader, writer = await connect(port)
            writer.write(HEAD + b"\r\n")
            assert (await read_response(reader))[0] == 200
            held.append((reader, writer))
        reader, writer = await connect(port)  # the fifth from the same address
        try:
            writer.write(HEAD + b"\r\n")
            data = b""
            with contextlib.suppress(ConnectionError):
                data = await asyncio.wait_for(reader.read(65536), 5)
                await closed_within(reader, 5.0)
            assert data == b"" or data.startswith(b"HTTP/1.1 429 "), data[:100]
        finally:
            close(writer)
        # the held ones still work, and once one is gone a new connection is accepted again
        reader, writer = held[0]
        writer.write(HEAD + b"\r\n")
        assert (await read_response(reader))[0] == 200
        close(writer)
        held.pop(0)
        await asyncio.sleep(0.2)
        reader, writer = await connect(port)
        held.append((reader, writer))
        writer.write(HEAD + b"\r\n")
        assert (await read_response(reader))[0] == 200
    finally:
        for _, writer in held:
            close(writer)


async def test_many_slowloris_connections_do_not_outlive_the_head_timeout(make_proxy, serve, upstreams):
    port, proxy, _ = await public_endpoint(make_proxy, serve, upstreams, request_head_timeout=0.5,
                                           max_connections_per_client=1000)
    conns = [await connect(port) for _ in range(200)]
    for _, writer in conns:
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-")
    await asyncio.sleep(2.0)
    assert len(proxy.frontend._server.connections) == 0
    for _, writer in conns:
        close(writer)
