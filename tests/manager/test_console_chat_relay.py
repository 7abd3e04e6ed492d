"""The chat page's relay (manager/console/chat_relay.py; docs/console.md, "Chat page"): which custom base URLs it
may reach (pure), and, over real sockets, that it streams without buffering and closes the upstream when the
browser goes away. The browser flows (a real replica, Stop, XSS) are in tests/console/test_console_chat.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from manager.console.chat_relay import completions_url, custom_target_problem, relay

ALLOWED = ["https://api.example.com/v1", "http://10.0.0.5:8000"]


@pytest.mark.parametrize("url", [
    "https://api.example.com/v1", "https://api.example.com/v1/", "https://API.example.com/v1/extra",
    "http://10.0.0.5:8000", "http://10.0.0.5:8000/v1",
])
def test_allowed_base_urls(url: str) -> None:
    assert custom_target_problem(url, ALLOWED) is None


@pytest.mark.parametrize(("url", "why"), [
    ("", "required"),
    ("ftp://api.example.com/v1", "http"),
    ("https://api.example.com/v2", "does not relay"),  # another path
    ("https://api.example.com/v1evil", "does not relay"),  # a prefix of a name is not the path
    ("http://api.example.com/v1", "does not relay"),  # another scheme
    ("https://api.example.com:444/v1", "does not relay"),  # another port
    ("http://10.0.0.5:8001", "does not relay"),
    ("http://127.0.0.1:8090/v1", "does not relay"),  # the manager itself
    ("https://user:pw@api.example.com/v1", "credentials"),
    ("https://api.example.com/v1?x=1", "query"),
    ("http://[::1", "not a valid URL"),
    ("https://x.example/" + "a" * 1100, "1024"),
])
def test_refused_base_urls(url: str, why: str) -> None:
    assert why in (custom_target_problem(url, ALLOWED) or "")


def test_nothing_is_allowed_by_default() -> None:
    assert custom_target_problem("https://api.openai.com/v1", []) is not None


def test_completions_url() -> None:
    assert completions_url("http://127.0.0.1:8100") == "http://127.0.0.1:8100/v1/chat/completions"
    assert completions_url("https://api.example.com/v1/") == "https://api.example.com/v1/chat/completions"


@pytest.fixture
async def upstream() -> AsyncIterator[dict]:
    """A slow SSE upstream: one event every 0.2 s for 10 s; records whether its client went away."""
    state: dict = {"disconnected": asyncio.Event(), "finished": False, "auth": None}

    async def chat(request: web.Request) -> web.StreamResponse:
        state["auth"] = request.headers.get("Authorization")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        try:
            if request.query.get("silent"):  # reading a long prompt: nothing sent for a while, not even headers
                await asyncio.sleep(10)
            await response.prepare(request)
            for i in range(50):
                await response.write(f"data: {i}\n\n".encode())
                await asyncio.sleep(0.2)
        except (ConnectionResetError, asyncio.CancelledError):
            state["disconnected"].set()
            raise
        state["finished"] = True
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state["url"] = f"http://127.0.0.1:{port}/v1/chat/completions"
    yield state
    await runner.cleanup()


@pytest.fixture
async def relay_url(upstream: dict) -> AsyncIterator[str]:
    """A server whose one route relays to the upstream (as the console's chat routes do)."""
    async def handler(request: web.Request) -> web.StreamResponse:
        url = upstream["url"] + ("?silent=1" if request.query.get("silent") else "")
        return await relay(request, url, {"Authorization": "Bearer t"}, await request.read())

    app = web.Application()
    app.router.add_post("/relay", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/relay"
    await runner.cleanup()


async def test_relay_streams_and_closes_the_upstream_when_the_browser_goes(upstream: dict, relay_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        resp = await session.post(relay_url, data=b"{}")
        assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
        first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)  # not buffered to the end
        assert first == b"data: 0\n\n"
        second = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
        assert second == b"data: 1\n\n"
        resp.close()  # the browser's Stop: the connection goes away mid-answer
    await asyncio.wait_for(upstream["disconnected"].wait(), 5)
    assert not upstream["finished"] and upstream["auth"] == "Bearer t"


async def test_relay_closes_a_silent_upstream_when_the_browser_goes(upstream: dict, relay_url: str) -> None:
    """The browser leaves while the upstream has sent nothing yet: no write fails, the relay must notice."""
    async with aiohttp.ClientSession() as session:
        with pytest.raises(asyncio.TimeoutError):
            await session.post(relay_url + "?silent=1", data=b"{}", timeout=aiohttp.ClientTimeout(total=1))
    await asyncio.wait_for(upstream["disconnected"].wait(), 3)  # long before the upstream's 10 s
    assert not upstream["finished"]
