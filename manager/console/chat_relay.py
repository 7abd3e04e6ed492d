"""The chat page's streaming relay (docs/console.md, "Chat page"): the console's CSP keeps the page's requests on
its own origin (``connect-src 'self'``), and a service's endpoint lives on an app proxy's origin, so the page posts
its OpenAI chat request here and the relay forwards it to the endpoint, streaming the answer back without
buffering. When the browser goes away (the page's **Stop**), the upstream request is closed, so the app proxy and
then the replica see the disconnect and stop generating.

Two routes under the console's ``/api/`` (session + CSRF like every other): ``POST
/api/services/{id}/chat/completions`` (the caller must be allowed to see the service; a non-public endpoint gets a
short-lived token minted for this one request, never shown to the page) and ``POST /api/chat/custom/completions``
(any OpenAI-compatible API the operator allows in ``[console] chat_allowed_base_urls``: anything else is refused,
so the relay cannot be used to reach the manager's network).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable
from typing import TypeVar
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from common.errors import Forbidden, InvalidAPIParameters, ProblemError
from common.tokens import mint_endpoint_token
from manager.api.auth import caller_of
from manager.api.util import service_ref
from manager.context import CTX
from manager.services.read import load_endpoint

T = TypeVar("T")

# The relay's bounds (docs/console.md, "Chat page"): how long to wait for the upstream's answer to start (a large
# prompt on a CPU replica takes a while), the longest gap between two chunks, and the longest whole answer. The
# minted token outlives the whole answer by a minute so a long generation is never cut by its expiry.
CONNECT_TIMEOUT = 10.0
READ_GAP_TIMEOUT = 300.0
TOTAL_TIMEOUT = 1800.0
TOKEN_LIFETIME = TOTAL_TIMEOUT + 60.0
# How often a relay waiting on a silent upstream (a long prompt being read, before any token) checks whether the
# browser is still there: a stopped page frees the replica within this long even when nothing is being written.
DISCONNECT_POLL = 0.5
MAX_TOKEN_CHARS = 4096  # a custom API's token (passed through, never stored or logged)
RELAYED_HEADERS = ("Content-Type",)  # what of the upstream's answer the page sees
CLIENT_CLOSED = 499  # the status logged when the browser left before the upstream answered (nginx's convention)


class UpstreamUnavailable(ProblemError):
    status, slug, title = 502, "bad-gateway", "The model endpoint could not be reached."


def custom_target_problem(base_url: str, allowed: list[str]) -> str | None:
    """Why ``base_url`` may not be relayed to, or None. Pure: only http(s) URLs without credentials, query or
    fragment, and only those that start with one of the operator's ``allowed`` prefixes (same scheme, host and
    port, and the path under the allowed one)."""
    if not base_url or len(base_url) > 1024:
        return "base_url: required, at most 1024 characters"
    try:
        parts = urlsplit(base_url)
        port = parts.port
    except ValueError:
        return "base_url: not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "base_url: must be an http:// or https:// URL"
    if parts.username or parts.password or parts.query or parts.fragment:
        return "base_url: must not carry credentials, a query or a fragment"
    for prefix in allowed:
        p = urlsplit(prefix)
        if (p.scheme, (p.hostname or "").lower(), p.port) != (parts.scheme, parts.hostname.lower(), port):
            continue
        base_path, want = parts.path.rstrip("/") + "/", p.path.rstrip("/") + "/"
        if base_path.startswith(want):
            return None
    return ("base_url: this console does not relay to that address; an operator can allow it in [console] "
            "chat_allowed_base_urls")


def completions_url(base_url: str) -> str:
    """``…/v1`` + ``/chat/completions``; a base without ``/v1`` gets it (the service endpoint URL is the root)."""
    base = base_url.rstrip("/")
    return base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")


async def _read_body(request: web.Request) -> bytes:
    limit = request.app[CTX].config.limits.max_json_body
    if request.content_length is not None and request.content_length > limit:
        raise InvalidAPIParameters(f"body: at most {limit} bytes")
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        raise InvalidAPIParameters(f"body: at most {limit} bytes")
    return body


async def _unless_gone(request: web.Request, awaitable: Awaitable[T]) -> T:
    """Await ``awaitable``, but raise ConnectionResetError (cancelling it) as soon as the browser's connection is
    gone: aiohttp does not cancel a handler on disconnect, and a silent upstream gives no write to fail."""
    task = asyncio.ensure_future(awaitable)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL)
            if done:
                return task.result()
            if request.transport is None or request.transport.is_closing():
                raise ConnectionResetError("the browser went away")
    finally:
        if not task.done():
            task.cancel()


async def relay(request: web.Request, url: str, headers: dict[str, str], body: bytes) -> web.StreamResponse:
    """POST ``body`` to ``url`` and stream the answer back chunk by chunk. When the browser disconnects (a write
    fails, or the wait for the upstream notices it), the upstream connection is closed at once, never returned to
    a pool mid-answer: that is what the app proxy, then the replica, sees."""
    timeout = aiohttp.ClientTimeout(total=TOTAL_TIMEOUT, connect=CONNECT_TIMEOUT, sock_read=READ_GAP_TIMEOUT)
    send = {"Content-Type": "application/json", "Accept": "text/event-stream, application/json", **headers}
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
        try:
            upstream = await _unless_gone(request, session.post(url, data=body, headers=send,
                                                                allow_redirects=False))
        except ConnectionResetError:
            return web.Response(status=CLIENT_CLOSED)  # nobody reads it: the browser left before the answer began
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnavailable(f"{type(exc).__name__}: {exc}"[:300]) from None
        async with upstream:
            response = web.StreamResponse(status=upstream.status)
            for name in RELAYED_HEADERS:
                if name in upstream.headers:
                    response.headers[name] = upstream.headers[name]
            response.headers["Cache-Control"] = "no-store"
            response.headers["X-Accel-Buffering"] = "no"
            if "Content-Encoding" in upstream.headers:
                response.headers["Content-Encoding"] = upstream.headers["Content-Encoding"]
            try:
                await response.prepare(request)
                while chunk := await _unless_gone(request, upstream.content.readany()):
                    await response.write(chunk)
            except ConnectionResetError:
                upstream.close()  # the page stopped: close the upstream at once, the replica sees it
                return response
            except (aiohttp.ClientError, TimeoutError):
                upstream.close()  # the upstream broke mid-answer: end the page's stream where it is
            except asyncio.CancelledError:
                upstream.close()
                raise
            await response.write_eof()
            return response


async def service_chat(request: web.Request) -> web.StreamResponse:
    """``POST /api/services/{service_id}/chat/completions``: the OpenAI chat request, relayed to the service."""
    ctx = request.app[CTX]
    body = await _read_body(request)
    async with ctx.db() as db:
        endpoint = await load_endpoint(db, caller_of(request), *service_ref(request))
    if not endpoint.url:
        raise InvalidAPIParameters("service_id: the service has no endpoint URL yet")
    headers: dict[str, str] = {}
    if not endpoint.open_to_public:
        now = time.time()
        token, _ = mint_endpoint_token(ctx.jwt_secret, endpoint.id, endpoint.owner_id, now + TOKEN_LIFETIME,
                                       uuid.uuid4(), now)
        headers["Authorization"] = f"BackendAI {token}"
    return await relay(request, completions_url(endpoint.url), headers, body)


async def custom_chat(request: web.Request) -> web.StreamResponse:
    """``POST /api/chat/custom/completions``: relay to an operator-allowed OpenAI-compatible API. The target and
    its token come in headers (``X-Moorage-Base-URL``, ``X-Moorage-Upstream-Token``) so the body stays the plain
    OpenAI request; the token is passed through and never stored or logged."""
    ctx = request.app[CTX]
    base_url = request.headers.get("X-Moorage-Base-URL", "")
    problem = custom_target_problem(base_url, list(ctx.config.console.chat_allowed_base_urls))
    if problem:
        raise Forbidden(problem)
    token = request.headers.get("X-Moorage-Upstream-Token", "")
    if len(token) > MAX_TOKEN_CHARS or any(c in token for c in "\r\n"):
        raise InvalidAPIParameters(f"token: at most {MAX_TOKEN_CHARS} characters on one line")
    body = await _read_body(request)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await relay(request, completions_url(base_url), headers, body)


def add_chat_routes(api: web.Application) -> None:
    api.router.add_post("/services/{service_id}/chat/completions", service_chat)
    api.router.add_post("/chat/custom/completions", custom_chat)

