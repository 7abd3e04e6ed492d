"""Requests aiohttp's parser refuses get RFC 7807 answers from the manager (manager/http_errors.py), never aiohttp's
``text/plain`` body quoting the request, never a traceback.

Before: a 10 KB URL or a 20 KB header got ``400 Bad Request`` as ``text/plain`` with
``Got more than 8190 bytes when reading: b'...'`` (the request's own bytes echoed back).

The guard tests at the end fail when an aiohttp upgrade changes the private method manager/http_errors.py overrides
(``web_protocol.RequestHandler.handle_error``) or how aiohttp reaches it: re-check that module against the new
aiohttp, then update the expectations here.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from common.store import MemoryStore
from manager.http_errors import HEADER_LINE_LIMIT, REQUEST_LINE_LIMIT, ProblemAppRunner, ProblemRequestHandler
from manager.server import build_manager_app, start_manager_site
from tests.appproxy.appproxy_testkit import free_port
from tests.manager.inprocess import manager_config


async def raw_exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as is, read the answer until the server closes the connection (it does after these
    errors, or this times out); (status, headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


@pytest.fixture
async def manager_port(tmp_path: Path):
    port = free_port()
    config = manager_config(tmp_path, port, reconcile={"interval": 5})
    runner = await start_manager_site(build_manager_app(config, MemoryStore(), run_loops=False), config)
    try:
        yield port
    finally:
        await runner.cleanup()


def assert_problem(status: int, headers: dict[str, str], body: bytes, expected: int, *words: str) -> dict:
    assert status == expected, (status, body[:300])
    assert headers["content-type"].startswith("application/problem+json"), headers
    doc = json.loads(body)
    assert doc["status"] == expected and doc["title"] and doc["detail"] and doc["type"].startswith("https://"), doc
    assert "Traceback" not in body.decode() and "xxxx" not in body.decode(), doc  # the request is not echoed
    for word in words:
        assert word in doc["detail"], (word, doc)
    return doc


async def test_a_10kb_url_gets_414_problem_json(manager_port: int) -> None:
    request = b"GET /services?q=" + b"x" * 10_000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n"
    status, headers, body = await raw_exchange(manager_port, request)
    assert_problem(status, headers, body, 414, str(REQUEST_LINE_LIMIT))


async def test_a_20kb_header_gets_431_problem_json(manager_port: int) -> None:
    request = b"GET /services HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"x" * 20_000 + b"\r\n\r\n"
    status, headers, body = await raw_exchange(manager_port, request)
    assert_problem(status, headers, body, 431, str(HEADER_LINE_LIMIT))
    # through an ordinary client too
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{manager_port}/", headers={"X-Big": "x" * 20_000}) as resp:
            assert resp.status == 431
            assert resp.content_type == "application/problem+json"


async def test_too_many_headers_and_garbage_get_problem_json(manager_port: int) -> None:
    many = b"".join(b"X-H%d: 1\r\n" % i for i in range(200))
    status, headers, body = await raw_exchange(manager_port, b"GET / HTTP/1.1\r\nHost: a\r\n" + many + b"\r\n")
    assert_problem(status, headers, body, 431, "header lines")
    status, headers, body = await raw_exchange(manager_port, b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert_problem(status, headers, body, 400)
    status, headers, body = await raw_exchange(manager_port, b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n")
    assert_problem(status, headers, body, 400)
    # TLS to the plain port (a client configured for https://): told so, in a problem document
    status, headers, body = await raw_exchange(manager_port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" +
                                               b"\x00" * 64)
    assert_problem(status, headers, body, 400, "TLS")


async def test_ordinary_requests_are_untouched(manager_port: int) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{manager_port}/", params={"q": "x" * 4000}) as resp:
            assert resp.status == 200
        async with session.get(f"http://127.0.0.1:{manager_port}/nope") as resp:
            assert resp.status == 401 and resp.content_type == "application/problem+json"  # unsigned


# -- guards on the aiohttp internals manager/http_errors.py relies on -------------------------------------------

def test_aiohttp_is_the_version_http_errors_was_written_for() -> None:
    major, minor = (int(p) for p in aiohttp.__version__.split(".")[:2])
    assert (major, minor) == (3, 14), (
        f"aiohttp {aiohttp.__version__}: re-check manager/http_errors.py (it overrides the private "
        "RequestHandler.handle_error and AppRunner._make_server) and then this test")


def test_the_overridden_private_method_keeps_its_shape() -> None:
    params = list(inspect.signature(RequestHandler.handle_error).parameters)
    assert params == ["self", "request", "status", "exc", "message"], params
    assert list(inspect.signature(ProblemRequestHandler.handle_error).parameters) == params
    # parser errors reach it through _make_error_handler; handler errors and timeouts through _handle_request
    error_handler = inspect.getsource(RequestHandler._make_error_handler)
    assert "self.handle_error(" in error_handler and "err_info.status" in error_handler
    assert "self.handle_error(request, 500, exc)" in inspect.getsource(RequestHandler._handle_request)
    # the attributes the override reads
    assert {"max_line_size", "max_field_size", "max_headers"} <= set(
        inspect.signature(RequestHandler.__init__).parameters)
    assert inspect.iscoroutinefunction(web.AppRunner._make_server)


async def test_the_runner_builds_problem_handlers() -> None:
    runner = ProblemAppRunner(web.Application())
    await runner.setup()
    try:
        assert runner.server is not None
        handler = runner.server()
        assert type(handler) is ProblemRequestHandler, type(handler)
        assert (handler.max_line_size, handler.max_field_size) == (REQUEST_LINE_LIMIT, HEADER_LINE_LIMIT)
    finally:
        await runner.cleanup()
