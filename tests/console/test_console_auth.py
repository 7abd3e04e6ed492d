"""Console login, sessions and browser security against a real `moorage up` (docs/console.md, "Security"):
one-time login link, key login, logout, cookie flags, CSRF, security headers, users seeing only their own
services, and hostile text rendered as text."""

from __future__ import annotations

from typing import Any

import pytest

from tests.console.conftest import ECHO, Console, login_with_keys, shot
from tests.e2e.harness import moorage, wait_for

pytestmark = pytest.mark.e2e
XSS = '<img src=x onerror="window.__xss=1">'


def test_login_link_is_single_use_and_sets_a_strict_cookie(console: Console, browser: Any) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(console.login_url)
    page.get_by_role("heading", name="Model Serving").wait_for()
    assert "token" not in page.url and page.url.startswith(console.url)  # no secret left in the URL
    (cookie,) = [c for c in context.cookies() if c["name"] == "moorage_console"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]  # plain http here
    assert page.evaluate("document.cookie") == ""  # script cannot read the session
    assert page.evaluate("JSON.stringify(localStorage)") == "{}"
    shot(page, "01-services-empty")
    context.close()

    again = browser.new_context()
    page = again.new_page()
    page.goto(console.login_url)  # the second use is refused
    page.get_by_text("This login link was already used or has expired").wait_for()
    assert page.get_by_label("Access key").is_visible()
    assert not [c for c in again.cookies() if c["name"] == "moorage_console"]
    assert again.request.get(console.url + "/console/session").status == 401
    again.close()


def test_key_login_wrong_key_and_logout(console: Console, page: Any) -> None:
    page.goto(console.url + "/")
    page.get_by_label("Access key").fill(console.access_key)
    page.get_by_label("Secret key").fill("wrong-secret")
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("alert").filter(has_text="access key or secret key is wrong").wait_for()
    shot(page, "00-login")
    login_with_keys(page, console)
    assert page.context.request.get(console.url + "/console/session").status == 200
    page.get_by_role("button", name="Log out").click()
    page.get_by_label("Access key").wait_for()
    assert page.context.request.get(console.url + "/console/session").status == 401
    assert page.context.request.get(console.url + "/api/services").status == 401


def test_csrf_header_and_origin_are_required(console: Console, page: Any) -> None:
    login_with_keys(page, console)
    req = page.context.request
    csrf = req.get(console.url + "/console/session").json()["csrf_token"]
    url = console.url + "/api/services/_/search"
    assert req.post(url, data={}).status == 403  # no header
    assert req.post(url, data={}, headers={"X-Moorage-CSRF": "0" * 64}).status == 403  # wrong token
    assert req.post(url, data={}, headers={"X-Moorage-CSRF": csrf, "Origin": "http://evil.example"}).status == 403
    assert req.post(url, data={}, headers={"X-Moorage-CSRF": csrf, "Sec-Fetch-Site": "cross-site"}).status == 403
    ok = req.post(url, data={}, headers={"X-Moorage-CSRF": csrf, "Origin": console.url})
    assert ok.status == 200, ok.text()
    assert req.get(console.url + "/api/services").status == 200  # safe methods need no token
    # login from another origin is refused too (login CSRF)
    assert req.post(console.url + "/console/login", data={"access_key": console.access_key,
                    "secret_key": console.secret_key}, headers={"Origin": "http://evil.example"}).status == 403
    # and a page on another origin cannot make the browser send the cookie: SameSite=Strict (checked above)


def test_security_headers_on_every_response(console: Console, page: Any) -> None:
    login_with_keys(page, console)
    for path in ("/", "/static/js/main.js", "/api/services", "/console/session", "/api/no-such-route"):
        resp = page.context.request.get(console.url + path)
        h = resp.headers
        csp = h["content-security-policy"]
        script_src = next(p for p in csp.split(";") if p.strip().startswith("script-src"))
        assert "unsafe-inline" not in script_src and "unsafe-eval" not in script_src, csp
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, csp
        assert h["x-frame-options"] == "DENY" and h["x-content-type-options"] == "nosniff", (path, h)
        assert h["referrer-policy"] == "no-referrer", (path, h)


def test_users_see_only_their_own_services_and_hostile_text_stays_text(console: Console, browser: Any) -> None:
    bob_key, bob_secret = console.create_user(f"bob{XSS}@example.com")
    bob_env = console.user_env(bob_key, bob_secret)
    moorage(bob_env, "folder", "create", "bobs")
    moorage(bob_env, "folder", "upload", "bobs", str(ECHO))
    moorage(bob_env, "service", "create", "bobs", "0", "--name", "bob-svc", "-r", "cpu=0.25", "-r", "mem=64m")
    console.cli("service", "create", "echo", "0", "--name", "admin-svc", "-r", "cpu=0.25", "-r", "mem=64m")
    admin_svc = console.cli_json("service", "info", "admin-svc")["endpoint_id"]

    admin = browser.new_context()
    page = admin.new_page()
    page.on("dialog", lambda d: d.dismiss())
    login_with_keys(page, console)
    row = page.locator("tr[data-service='bob-svc']")
    row.wait_for()
    assert XSS in row.inner_text()  # the owner's e-mail, shown as text
    assert page.evaluate("window.__xss") is None and page.locator("td img").count() == 0
    shot(page, "02-services-admin-sees-all")
    admin.close()

    bob = browser.new_context()
    page = bob.new_page()
    login_with_keys(page, console, bob_key, bob_secret)
    page.locator("tr[data-service='bob-svc']").wait_for()
    assert page.locator("tr[data-service='admin-svc']").count() == 0
    assert bob.request.get(f"{console.url}/api/services/{admin_svc}").status == 404
    page.goto(f"{console.url}/#/services/{admin_svc}")
    page.get_by_role("alert").filter(has_text="not found").wait_for()
    wait_for(lambda: page.evaluate("window.__xss") is None, 1, "no script ran")
    bob.close()


def test_first_load_is_small_and_same_origin(console: Console, page: Any) -> None:
    """The login page with everything it loads: well under the 300 KB goal, and nothing from another origin."""
    sizes: dict[str, int] = {}
    page.on("response", lambda r: sizes.__setitem__(r.url, len(r.body())) if r.status < 300 else None)
    page.goto(console.url + "/")
    page.get_by_label("Access key").wait_for()
    page.wait_for_load_state("networkidle")
    assert any(u.endswith("/vendor/preact.module.js") for u in sizes), sizes
    assert all(u.startswith(console.url + "/") for u in sizes), sizes
    assert sum(sizes.values()) < 300_000, sizes
