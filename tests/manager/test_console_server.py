"""The console's server side (manager/console/; docs/console.md): the pure browser-security decisions, the
database-backed sessions and login links, key login with its throttle, and the list API extensions the console
reads (lifecycle filter, status/owner/created_at, paging that stays fast with 1,000 services). The browser flows
are in tests/console/."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
import sqlalchemy as sa

from common.status import EndpointLifecycle
from manager.api.metrics import merge_reports
from manager.console import sessions
from manager.console.app import build_console_app
from manager.console.security import CSRF_HEADER, SESSION_COOKIE, LoginThrottle, cookie_attributes, csrf_problem
from manager.context import CTX
from manager.db.models import ConsoleSession, Endpoint, KeyPair
from manager.server import API_ROUTE_TABLES
from tests.manager.apiclient import APIClient
from tests.manager.inprocess import serving
from tests.manager.test_api import ECHO_DEF, _create_body, _folder_with, manager  # noqa: F401 - fixture
from tests.services import free_port

HOST = "127.0.0.1:8091"


# -- pure decisions ------------------------------------------------------------------------------------------------

def test_csrf_safe_methods_pass_and_state_changes_need_the_token() -> None:
    assert csrf_problem("GET", {}, None, HOST) is None
    assert csrf_problem("HEAD", {"Origin": "http://evil.example"}, None, HOST) is None
    assert "X-Moorage-CSRF" in (csrf_problem("POST", {}, "t" * 64, HOST) or "")
    assert csrf_problem("POST", {CSRF_HEADER: "t" * 64}, "t" * 64, HOST) is None
    assert csrf_problem("DELETE", {CSRF_HEADER: "u" * 64}, "t" * 64, HOST) is not None
    assert csrf_problem("POST", {CSRF_HEADER: ""}, "", HOST) is not None  # no session: no token matches
    assert csrf_problem("PATCH", {CSRF_HEADER: "t", "Origin": f"http://{HOST}"}, "t", HOST) is None


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example"}, {"Origin": "null"}, {"Origin": "http://127.0.0.1:8092"},
    {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
])
def test_csrf_other_origins_are_refused_even_with_the_token(headers: dict[str, str]) -> None:
    assert csrf_problem("POST", {**headers, CSRF_HEADER: "t"}, "t", HOST) is not None
    assert csrf_problem("POST", headers, None, HOST, require_token=False) is not None  # login too


def test_cookie_attributes() -> None:
    assert cookie_attributes(False, 60) == {"httponly": True, "samesite": "Strict", "secure": False, "path": "/",
                                            "max_age": 60}
    assert cookie_attributes(True, None)["secure"] is True


def test_login_throttle_window_and_bounded_memory() -> None:
    throttle = LoginThrottle(limit=3, window=60, max_clients=2)
    for t in (0, 1, 2):
        assert throttle.blocked("a", t) == 0
        throttle.failed("a", t)
    assert throttle.blocked("a", 3) == pytest.approx(57)
    assert throttle.blocked("b", 3) == 0  # per client
    assert throttle.blocked("a", 60.5) == 0  # the first failure left the window
    throttle.failed("b", 4)
    throttle.failed("c", 5)  # a third client: the oldest tracked one is forgotten
    assert throttle.blocked("a", 6) == 0


def test_csrf_token_is_derived_not_the_secret() -> None:
    secret = sessions.new_secret()
    token = sessions.csrf_token(secret)
    assert token != secret and secret not in token and token == sessions.csrf_token(secret)
    assert sessions.hash_secret(secret) == hashlib.sha256(secret.encode()).hexdigest()


# -- the console app over an in-process manager ---------------------------------------------------------------------

@pytest.fixture
async def console(manager: dict) -> AsyncIterator[dict]:  # noqa: F811
    port = free_port()
    ctx = manager["app"][CTX]
    async with serving(build_console_app(ctx, API_ROUTE_TABLES, secure=False), port):
        yield {**manager, "console_url": f"http://127.0.0.1:{port}", "ctx": ctx}


async def _login(session: aiohttp.ClientSession, url: str, access_key: str, secret_key: str) -> dict:
    async with session.post(url + "/console/login", json={"access_key": access_key,
                                                          "secret_key": secret_key}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_sessions_are_stored_hashed_and_expire_server_side(console: dict) -> None:
    ctx = console["ctx"]
    alice: APIClient = console["alice"]
    async with ctx.db() as db:
        secret = await sessions.create(db, sessions.SessionKind.SESSION, alice.access_key, 60)
        stored = list((await db.execute(sa.select(ConsoleSession.id_hash))).scalars())
        assert secret not in stored and sessions.hash_secret(secret) in stored
        assert await sessions.lookup(db, secret) is not None
        assert await sessions.lookup(db, secret, datetime.now(UTC) + timedelta(seconds=61)) is None  # expired
        assert await sessions.lookup(db, "x" * 500) is None
        kp = await db.get(KeyPair, alice.access_key)
        kp.is_active = False
        await db.commit()
        assert await sessions.lookup(db, secret) is None  # an inactive keypair's sessions stop working
        kp.is_active = True
        await db.commit()
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        browser.cookie_jar.update_cookies({SESSION_COOKIE: secret})
        async with browser.get(console["console_url"] + "/console/session") as resp:
            assert resp.status == 200 and (await resp.json())["email"] == "alice@example.com"


async def test_login_link_is_single_use_even_when_raced(console: dict) -> None:
    ctx = console["ctx"]
    alice: APIClient = console["alice"]
    link = await sessions.mint_login_link(ctx.db, alice.access_key, 60)
    url = console["console_url"] + "/console/login-link?token=" + link

    async def use() -> tuple[int, str, bool]:
        jar = aiohttp.CookieJar(unsafe=True)  # the default jar ignores cookies of IP-address hosts
        async with aiohttp.ClientSession(cookie_jar=jar) as browser, browser.get(url, allow_redirects=False) as resp:
            return resp.status, resp.headers["Location"], SESSION_COOKIE in resp.cookies

    results = await asyncio.gather(*(use() for _ in range(5)))
    assert sorted(r[1] for r in results).count("/#/services") == 1, results
    assert all(r[0] == 303 for r in results) and sum(r[2] for r in results) == 1
    planted = await sessions.mint_login_link(ctx.db, alice.access_key, 60)
    async with aiohttp.ClientSession() as browser, browser.get(
            console["console_url"] + "/console/login-link?token=" + planted, allow_redirects=False,
            headers={"Sec-Fetch-Site": "cross-site"}) as resp:
        assert resp.status == 403 and SESSION_COOKIE not in resp.cookies  # followed from another site's page
    expired = await sessions.mint_login_link(ctx.db, alice.access_key, 60)
    async with ctx.db() as db:
        assert await sessions.redeem_login_link(db, expired, datetime.now(UTC) + timedelta(seconds=61)) is None
        assert await sessions.redeem_login_link(db, expired) is None  # and it is gone


async def test_key_login_is_throttled_per_client(console: dict) -> None:
    alice: APIClient = console["alice"]
    url = console["console_url"] + "/console/login"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        for _ in range(console["ctx"].config.console.login_failures_per_minute):
            async with browser.post(url, json={"access_key": alice.access_key, "secret_key": "wrong"}) as resp:
                assert resp.status == 401
        async with browser.post(url, json={"access_key": alice.access_key, "secret_key": alice.secret_key}) as resp:
            assert resp.status == 429 and int(resp.headers["Retry-After"]) > 0  # even the right key, for now
        async with browser.post(url, json={"access_key": "", "secret_key": "x"}) as resp:
            assert resp.status == 429


async def test_console_api_is_the_manager_api_with_the_session_caller(console: dict) -> None:
    alice: APIClient = console["alice"]
    bob: APIClient = console["bob"]
    await _folder_with(alice, "echo", {"model-definition.yaml": ECHO_DEF})
    status, svc = await alice.request("POST", "/services", _create_body("echo", name="alice-svc", replicas=0))
    assert status == 201, svc
    base = console["console_url"]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        async with browser.get(base + "/api/services") as resp:
            assert resp.status == 401  # no session
        who = await _login(browser, base, bob.access_key, bob.secret_key)
        async with browser.get(f"{base}/api/services/{svc['endpoint_id']}") as resp:
            assert resp.status == 404  # bob's session acts as bob
        async with browser.post(base + "/api/services/_/search", json={},
                                headers={CSRF_HEADER: who["csrf_token"]}) as resp:
            assert resp.status == 200 and (await resp.json())["items"] == []
        async with browser.get(base + "/api/internal/heartbeat") as resp:
            assert resp.status == 404  # the cluster-signed internal routes are not served to browsers
        async with browser.post(base + "/console/logout", headers={CSRF_HEADER: who["csrf_token"]}) as resp:
            assert resp.status == 200
        async with browser.get(base + "/api/services") as resp:
            assert resp.status == 401


async def test_search_filters_lifecycle_and_stays_fast_with_1000_services(console: dict) -> None:
    alice: APIClient = console["alice"]
    bob: APIClient = console["bob"]
    ctx = console["ctx"]
    await _folder_with(alice, "echo", {"model-definition.yaml": ECHO_DEF})
    status, svc = await alice.request("POST", "/services", _create_body("echo", name="seed-svc", replicas=0))
    assert status == 201, svc
    async with ctx.db() as db:  # 1,000 more rows like it, written directly (the API path is tested elsewhere)
        seed = await db.get(Endpoint, uuid.UUID(svc["endpoint_id"]))
        columns = {c.key: getattr(seed, c.key) for c in sa.inspect(Endpoint).mapper.column_attrs}
        rows = [{**columns, "id": uuid.uuid4(), "name": f"bulk-{i:04d}", "proxy_port": None, "url": None,
                 "subdomain": None, "created_at": seed.created_at + timedelta(seconds=i + 1)} for i in range(1000)]
        await db.execute(sa.insert(Endpoint), rows)
        await db.commit()
    started = time.perf_counter()
    status, page = await alice.request("POST", "/services/_/search", {"offset": 981, "limit": 20})
    elapsed = time.perf_counter() - started
    assert status == 200 and page["pagination"]["total"] == 1001, page
    assert [i["name"] for i in page["items"]][-1] == "bulk-0999" and len(page["items"]) == 20
    item = page["items"][0]
    assert item["status"] == "READY" and item["owner"] == "alice@example.com" and item["created_at"]
    assert elapsed < 2.0, elapsed  # one page of 1,001: a few queries on indexed columns
    status, found = await alice.request("POST", "/services/_/search",
                                        {"filter": {"name": {"i_contains": "BULK-05"}}, "limit": 100})
    assert status == 200 and found["pagination"]["total"] == 100
    status, other = await bob.request("POST", "/services/_/search", {})
    assert other["pagination"]["total"] == 0  # bob sees none of alice's

    status, _ = await alice.request("DELETE", f"/services/{svc['endpoint_id']}")
    assert status == 200
    async with ctx.db() as db:  # the control loop finishes destroying it; make it so at once
        seed = await db.get(Endpoint, uuid.UUID(svc["endpoint_id"]))
        seed.lifecycle = EndpointLifecycle.DESTROYED
        await db.commit()
    status, destroyed = await alice.request("POST", "/services/_/search", {"lifecycle": "destroyed"})
    assert [i["name"] for i in destroyed["items"]] == ["seed-svc"] and destroyed["items"][0]["status"] == "DESTROYED"
    status, active = await alice.request("POST", "/services/_/search", {"lifecycle": "active"})
    assert active["pagination"]["total"] == 1000
    status, bad = await alice.request("POST", "/services/_/search", {"lifecycle": "gone"})
    assert status == 400 and "lifecycle" in bad["detail"]


async def test_clear_errors_reads_the_fixed_definition_again(console: dict) -> None:
    """Clear error and Retry after fixing the folder's model-definition.yaml runs the fixed file (a new
    revision); a still-broken file is a 400 that says why, and an unchanged one changes nothing."""
    alice: APIClient = console["alice"]
    await _folder_with(alice, "fixme", {"model-definition.yaml": ECHO_DEF})
    status, svc = await alice.request("POST", "/services", _create_body("fixme", name="fixme-svc", replicas=0))
    assert status == 201, svc
    sid = svc["endpoint_id"]
    status, _ = await alice.request("POST", f"/services/{sid}/errors/clear")
    assert status == 204
    status, info = await alice.request("GET", f"/services/{sid}")
    assert info["revision"] == 1  # nothing changed
    form = aiohttp.FormData()
    form.add_field("file", ECHO_DEF.replace("port: 8000", "port: 8001").encode(), filename="model-definition.yaml")
    status, _ = await alice.request("POST", "/folders/fixme/files", data=form, content_type="multipart/form-data")
    assert status == 201
    status, _ = await alice.request("POST", f"/services/{sid}/errors/clear")
    assert status == 204
    status, info = await alice.request("GET", f"/services/{sid}")
    assert info["revision"] == 2, info
    form = aiohttp.FormData()
    form.add_field("file", b"models: [", filename="model-definition.yaml")
    status, _ = await alice.request("POST", "/folders/fixme/files", data=form, content_type="multipart/form-data")
    status, problem = await alice.request("POST", f"/services/{sid}/errors/clear")
    assert status == 400 and "definition" in problem["detail"].lower(), problem


def test_merge_reports_adds_traffic_and_takes_replica_metrics_from_the_freshest() -> None:
    reports = [
        {"collected_at": 10.0, "replicas": 2, "proxy": {"rps": 1.5, "in_flight": 2},
         "metrics": {"tokens": {"sum": 100.0, "per_route": {}}}},
        {"collected_at": 12.0, "replicas": 2, "proxy": {"rps": 0.5, "in_flight": 1},
         "metrics": {"tokens": {"sum": 130.0, "per_route": {}}, "bad": {"sum": "x"}}},
    ]
    merged = merge_reports("e", reports)
    assert (merged.rps, merged.in_flight, merged.proxies, merged.collected_at) == (2.0, 3, 2, 12.0)
    assert merged.metrics == {"tokens": 130.0} and merged.scraped_replicas == 2
    empty = merge_reports("e", [])
    assert (empty.rps, empty.proxies, empty.collected_at, empty.metrics) == (0.0, 0, None, {})


async def test_service_metrics_route(console: dict) -> None:
    alice: APIClient = console["alice"]
    bob: APIClient = console["bob"]
    await _folder_with(alice, "echo", {"model-definition.yaml": ECHO_DEF})
    status, svc = await alice.request("POST", "/services", _create_body("echo", name="metric-svc", replicas=0))
    assert status == 201, svc
    status, body = await alice.request("GET", f"/services/{svc['endpoint_id']}/metrics")
    assert status == 200 and body["proxies"] == 0 and body["rps"] == 0.0, body  # no app proxy in this harness
    status, _ = await bob.request("GET", f"/services/{svc['endpoint_id']}/metrics")
    assert status == 404


def test_console_api_serves_no_cluster_internal_route() -> None:
    """The console's /api/ is authenticated by a user's session: a cluster-signed /internal/ route there would let
    a logged-in user speak as a proxy or an agent (heartbeats, usage records)."""
    from aiohttp.web import RouteDef

    from manager.server import API_ROUTE_TABLES

    paths = [route.path for table in API_ROUTE_TABLES for route in table if isinstance(route, RouteDef)]
    assert paths and not [p for p in paths if p.startswith("/internal")]


def test_merge_reports_adds_latency_histograms_and_tokens() -> None:
    hist = {"bounds": [0.1, 1.0], "counts": [3, 1, 0], "sum": 1.2}
    reports = [
        {"collected_at": 1.0, "proxy": {"rps": 0, "in_flight": 0, "latency": hist,
                                        "tokens": {"prompt": 5, "completion": 7}}},
        {"collected_at": 2.0, "proxy": {"rps": 0, "in_flight": 0, "latency": {**hist, "counts": [1, 1, 2]},
                                        "tokens": {"prompt": 1, "completion": "x"}}},
        {"proxy": {"latency": {"bounds": [0.5], "counts": [9, 9], "sum": 1.0}}},  # other bounds: left out
        {"proxy": {"latency": {"bounds": [0.5], "counts": [9], "sum": 1.0}}},  # malformed: left out
    ]
    merged = merge_reports("e", reports)
    assert merged.latency is not None
    assert merged.latency.counts == [4, 2, 2] and merged.latency.bounds == [0.1, 1.0]
    assert abs(merged.latency.sum - 2.4) < 1e-9
    assert merged.tokens == {"prompt": 6, "completion": 7}
    assert merge_reports("e", []).latency is None


async def test_login_link_route_and_cli(console: dict, capsys: pytest.CaptureFixture[str]) -> None:
    """``POST /login-links`` mints a one-time console URL for the caller's own keypair (keypair-signed only: not
    under the console's /api/); ``moorage console login-link`` prints just that URL."""
    from urllib.parse import urlsplit

    from manager.cli.main import main

    alice: APIClient = console["alice"]
    status, link = await alice.request("POST", "/login-links", {})
    assert status == 201 and 0 < link["expires_in"] <= 86400, link
    parts = urlsplit(link["url"])
    assert parts.path == "/console/login-link" and parts.query.startswith("token=")
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as browser:
        target = console["console_url"] + parts.path + "?" + parts.query
        async with browser.get(target, allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/#/services"
        async with browser.get(console["console_url"] + "/console/session") as resp:
            assert (await resp.json())["email"] == "alice@example.com"
        async with browser.get(target, allow_redirects=False) as resp:  # single use
            assert resp.headers["Location"] != "/#/services"
        # the console's /api/ does not serve it (a session must not mint links)
        session = await (await browser.get(console["console_url"] + "/console/session")).json()
        async with browser.post(console["console_url"] + "/api/login-links", json={},
                                headers={CSRF_HEADER: session["csrf_token"],
                                         "Origin": console["console_url"]}) as resp:
            assert resp.status in (404, 405), await resp.text()

    conn = ["--endpoint", console["url"], "--access-key", alice.access_key, "--secret-key", alice.secret_key]
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, main, [*conn, "console", "login-link"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "/console/login-link?token=" in out and parts.query not in out
