"""The console's aiohttp application (docs/console.md): static files at ``/``, session endpoints under
``/console/``, and the manager's own REST API under ``/api/`` (the same route tables and handlers as the keypair
API, sharing the manager's context), authenticated by a server-side cookie session that sets the same
:class:`~manager.ownership.Caller` as keypair signing."""

from __future__ import annotations

import hmac
import logging
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import BaseModel, ConfigDict, Field

from common.errors import AuthFailed, Forbidden, ProblemError, problem_middleware
from manager.api.auth import CALLER, UNKNOWN_KEY_SECRET
from manager.api.util import json_response, parse_body
from manager.console import sessions
from manager.console.chat_relay import add_chat_routes
from manager.console.links import LOGIN_LINK_PATH
from manager.console.security import (
    SECURITY_HEADERS,
    SESSION_COOKIE,
    LoginThrottle,
    cookie_attributes,
    csrf_problem,
)
from manager.context import CTX, ManagerContext
from manager.db.models import KeyPair, User
from manager.http_errors import ProblemAppRunner
from manager.ownership import Caller
from manager.secretbox import SecretBoxError

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"
SECURE: web.AppKey[bool] = web.AppKey("moorage_console_secure", bool)
THROTTLE: web.AppKey[LoginThrottle] = web.AppKey("moorage_console_throttle", LoginThrottle)


class TooManyAttempts(ProblemError):
    status, slug, title = 429, "too-many-requests", "Too many failed logins."


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    access_key: str = Field(min_length=1, max_length=32)
    secret_key: str = Field(min_length=1, max_length=256)


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.path.startswith(("/api/", "/console/")):
        response.headers.setdefault("Cache-Control", "no-store")


def _caller(keypair: KeyPair, user: User) -> Caller:
    return Caller(user.id, keypair.access_key, keypair.role, user.domain_name)


def _user_json(keypair: KeyPair, user: User, secret: str) -> dict[str, Any]:
    return {"email": user.email, "role": keypair.role.value, "access_key": keypair.access_key,
            "user_id": str(user.id), "csrf_token": sessions.csrf_token(secret)}


def _set_session_cookie(request: web.Request, response: web.StreamResponse, secret: str) -> None:
    ttl = int(request.app[CTX].config.console.session_ttl)
    response.set_cookie(SESSION_COOKIE, secret, **cookie_attributes(request.app[SECURE], ttl))  # type: ignore[arg-type]  # attributes are typed per keyword in aiohttp


def _refuse_cross_site(request: web.Request, require_token: bool, expected: str | None = None) -> None:
    problem = csrf_problem(request.method, request.headers, expected, request.host, require_token)
    if problem:
        raise Forbidden(problem)


@web.middleware
async def session_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every ``/api/`` request: a live session cookie (401 otherwise) and, unless it is a safe method, the CSRF
    checks (403). Sets the same Caller the keypair authentication sets."""
    secret = request.cookies.get(SESSION_COOKIE, "")
    async with request.app[CTX].db() as db:
        found = await sessions.lookup(db, secret)
    if found is None:
        raise AuthFailed("not logged in to the console, or the session expired: log in again")
    _refuse_cross_site(request, True, sessions.csrf_token(secret))
    request[CALLER] = _caller(*found)
    return await handler(request)


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


async def login(request: web.Request) -> web.Response:
    """Access key + secret key, checked against the stored (encrypted) secret in constant time."""
    _refuse_cross_site(request, require_token=False)
    ctx = request.app[CTX]
    throttle = request.app[THROTTLE]
    client = request.remote or "?"
    wait = throttle.blocked(client, time.monotonic())
    if wait > 0:
        raise TooManyAttempts(f"too many failed logins from this address; try again in {int(wait) + 1} s",
                              headers={"Retry-After": str(int(wait) + 1)})
    body = await parse_body(request, LoginRequest)
    async with ctx.db() as db:
        row = (await db.execute(sa.select(KeyPair, User).join(User, User.id == KeyPair.user_id)
                                .where(KeyPair.access_key == body.access_key))).first()
        stored = None
        if row is not None:
            try:
                stored = ctx.keypair_box.open(row[0].access_key, row[0].secret_key_sealed)
            except SecretBoxError as exc:
                log.error("console login refused: %s", exc)
        ok = hmac.compare_digest((stored or UNKNOWN_KEY_SECRET).encode(), body.secret_key.encode())
        if row is None or stored is None or not ok or not row[0].is_active or not row[1].is_active:
            throttle.failed(client, time.monotonic())
            raise AuthFailed("access key or secret key is wrong (or the keypair is inactive)")
        await sessions.purge_expired(db)
        secret = await sessions.create(db, sessions.SessionKind.SESSION, row[0].access_key,
                                       ctx.config.console.session_ttl)
    response = json_response(_user_json(row[0], row[1], secret))
    _set_session_cookie(request, response, secret)
    return response


async def login_link(request: web.Request) -> web.Response:
    """A one-time login link: becomes a session cookie, then a redirect to a URL without the token."""
    token = request.query.get("token", "")
    ctx = request.app[CTX]
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("none", "same-origin"):
        # a link followed from another site's page: it could log the visitor in as someone else (login CSRF).
        # Typed, pasted or opened from a terminal, browsers send "none".
        raise Forbidden("login links work only when opened directly (pasted, typed or from a terminal)")
    async with ctx.db() as db:
        access_key = await sessions.redeem_login_link(db, token)
        if access_key is None:
            return web.Response(status=303, headers={"Location": "/#/login?link=invalid"})
        secret = await sessions.create(db, sessions.SessionKind.SESSION, access_key, ctx.config.console.session_ttl)
    response = web.Response(status=303, headers={"Location": "/#/services"})
    _set_session_cookie(request, response, secret)
    return response


async def session_info(request: web.Request) -> web.Response:
    secret = request.cookies.get(SESSION_COOKIE, "")
    async with request.app[CTX].db() as db:
        found = await sessions.lookup(db, secret)
    if found is None:
        raise AuthFailed("not logged in")
    return json_response(_user_json(*found, secret))


async def logout(request: web.Request) -> web.Response:
    secret = request.cookies.get(SESSION_COOKIE, "")
    _refuse_cross_site(request, True, sessions.csrf_token(secret) if secret else None)
    async with request.app[CTX].db() as db:
        await sessions.delete(db, secret)
    response = json_response({"success": True})
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


def build_console_app(ctx: ManagerContext, route_tables: tuple[web.RouteTableDef, ...],
                      secure: bool) -> web.Application:
    """The console app over a started manager's context. ``route_tables``: the manager's public API tables, in
    their match order (manager.server.API_ROUTE_TABLES)."""
    app = web.Application(middlewares=[problem_middleware], client_max_size=ctx.config.limits.max_upload_bytes)
    app[CTX] = ctx
    app[SECURE] = secure
    app[THROTTLE] = LoginThrottle(ctx.config.console.login_failures_per_minute)
    app.on_response_prepare.append(_headers)
    app.router.add_get("/", index)
    app.router.add_post("/console/login", login)
    app.router.add_get(LOGIN_LINK_PATH, login_link)
    app.router.add_get("/console/session", session_info)
    app.router.add_post("/console/logout", logout)
    app.router.add_static("/static/", STATIC_DIR, follow_symlinks=False)
    api = web.Application(middlewares=[problem_middleware, session_middleware],
                          client_max_size=ctx.config.limits.max_upload_bytes)
    api[CTX] = ctx
    api.on_response_prepare.append(_headers)
    for table in route_tables:
        api.add_routes(table)
    add_chat_routes(api)
    app.add_subapp("/api", api)
    return app


async def start_console_site(ctx: ManagerContext) -> web.AppRunner:
    """Serve the console on ``[console] listen_host:listen_port`` (HTTPS with the manager's certificate when it
    has one). The caller cleans the runner up, before the manager's."""
    from manager.server import API_ROUTE_TABLES

    config = ctx.config
    ssl_context = config.server_ssl_context()
    runner = ProblemAppRunner(build_console_app(ctx, API_ROUTE_TABLES, ssl_context is not None), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, config.console.listen_host, config.console.listen_port,
                          ssl_context=ssl_context).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner

