"""The console's service flows in Chromium against a real `moorage up` with the echo model folder: Start
Service through the form (and a lost connection that keeps what was typed), Validate, detail, tokens (the proxy
refuses a revoked one), autoscaling rules, Edit (a rolling update that sends only what changed), a broken
definition's route error, Terminate, the phone layout, and no request to another origin."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.console.conftest import ECHO, Console, assert_every_control_named, login_with_keys, shot
from tests.e2e.harness import wait_for

pytestmark = pytest.mark.e2e
HEALTHY_TIMEOUT = 90_000  # ms: the echo replica's health check passes within seconds; a loaded machine is slower
STATE: dict[str, Any] = {}


def _chat(url: str, token: str | None) -> int:
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"BackendAI {token}"
    req = urllib.request.Request(url + "/v1/chat/completions", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_start_service_through_the_form(console: Console, page: Any, same_origin_only: list[str]) -> None:
    login_with_keys(page, console)
    page.get_by_role("link", name="Start Service").click()
    name = page.get_by_label("Service name")
    name.fill("-bad")
    page.get_by_role("button", name="Create").click()
    page.locator("#name-error").filter(has_text="4 to 24 characters").wait_for()  # the client-side rule
    name.fill("echo-form")
    assert page.get_by_label("Model Storage To Mount").input_value() == "echo"
    assert page.get_by_label("Model Destination For Model Folder").input_value() == "/models"
    assert page.get_by_label("Model Definition File Path").input_value() == "model-definition.yaml"
    page.get_by_role("button", name="Add variable").click()
    page.get_by_label("Variable name 1").fill("GREETING")
    page.get_by_label("Variable value 1").fill("hello")
    assert page.get_by_label("Multi Node").is_disabled()
    shot(page, "03-start-service")
    assert_every_control_named(page)

    # a lost connection: a banner, and nothing typed is lost
    page.context.set_offline(True)
    page.get_by_role("button", name="Create").click()
    page.get_by_role("status").filter(has_text="Connection to the console server lost").wait_for()
    page.context.set_offline(False)
    page.get_by_role("status").filter(has_text="Connection to the console server lost").wait_for(state="detached",
                                                                                               timeout=20_000)
    assert name.input_value() == "echo-form" and page.get_by_label("Variable value 1").input_value() == "hello"

    page.get_by_role("button", name="Create").click()
    page.get_by_role("heading", name="echo-form").wait_for()
    STATE["detail"] = page.url
    page.locator(".info .badge").filter(has_text="HEALTHY").wait_for(timeout=HEALTHY_TIMEOUT)
    shot(page, "04-service-detail")
    assert_every_control_named(page)
    page.get_by_role("link", name="Model Serving").click()
    row = page.locator("tr[data-service='echo-form']")
    row.locator(".badge").filter(has_text="HEALTHY").wait_for()
    assert "1 / 1" in row.inner_text() and "Token" in row.inner_text()
    STATE["url"] = row.locator("td.endpoint code").inner_text()
    shot(page, "05-services")
    assert_every_control_named(page)

    # the server applies the same name rule, and names the field
    page.get_by_role("link", name="Start Service").click()
    page.get_by_label("Service name").fill("echo-form")
    page.get_by_role("button", name="Create").click()
    page.locator("#name-error").filter(has_text="already exists").wait_for()


def test_validate_streams_events_and_the_container_log(console: Console, page: Any,
                                                       same_origin_only: list[str]) -> None:
    login_with_keys(page, console)
    page.get_by_role("link", name="Start Service").click()
    page.get_by_label("Service name").fill("echo-try")
    page.get_by_role("button", name="Validate").click()
    dialog = page.get_by_role("dialog", name="Validate")
    dialog.get_by_text("session_enqueued").wait_for()
    dialog.get_by_text("Finished: the service started and passed its health check").wait_for(timeout=HEALTHY_TIMEOUT)
    assert "session_healthy" in dialog.inner_text() and "container_log" not in dialog.inner_text()
    log = dialog.get_by_label("Container log").inner_text()
    assert "[stderr]" in log or "[stdout]" in log, log
    shot(page, "06-validate", full_page=False)
    assert_every_control_named(page)
    dialog.get_by_role("button", name="Close").first.click()


def test_tokens_generate_copy_revoke(console: Console, browser: Any) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 800},
                                  permissions=["clipboard-read", "clipboard-write"])
    page = context.new_page()
    login_with_keys(page, console)
    page.goto(STATE["detail"])
    assert _chat(STATE["url"], None) == 401
    page.get_by_role("button", name="Generate Token").click()
    dialog = page.get_by_role("dialog", name="Generate Token")
    dialog.get_by_label("Expiration date").fill(time.strftime("%Y-%m-%d", time.localtime(time.time() + 7 * 86400)))
    dialog.get_by_role("button", name="Generate").click()
    token = dialog.locator("#new-token").inner_text()
    dialog.get_by_role("button", name="Copy the token").click()
    assert page.evaluate("navigator.clipboard.readText()") == token
    shot(page, "07-generate-token", full_page=False)
    dialog.get_by_role("button", name="Done").click()
    assert _chat(STATE["url"], token) == 200
    # traffic shows up in the live metrics (the app proxies compute rps every few seconds)
    requests_chart = page.locator("figure.chart").filter(has_text="Requests/s")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and requests_chart.locator("strong").inner_text() in ("0", "—"):
        for _ in range(5):
            assert _chat(STATE["url"], token) == 200
        time.sleep(1)
    assert requests_chart.locator("strong").inner_text() not in ("0", "—")
    assert requests_chart.get_by_role("img").get_attribute("aria-label").startswith("Requests/s: now")
    page.locator("figure.chart").filter(has_text="Tokens/s").wait_for()  # from the replica's token counter
    page.get_by_role("heading", name="Metrics").scroll_into_view_if_needed()
    shot(page, "07b-metrics", full_page=False)
    page.get_by_role("button", name="Revoke token").first.click()
    page.locator("table.tokens").get_by_text("revoked").wait_for()
    wait_for(lambda: _chat(STATE["url"], token) in (401, 403), 10, "the proxy refusing the revoked token")
    context.close()


def test_autoscaling_rule_add_edit_delete(console: Console, page: Any, same_origin_only: list[str]) -> None:
    login_with_keys(page, console)
    page.goto(STATE["detail"])
    page.get_by_role("button", name="Add Rules").click()
    dialog = page.get_by_role("dialog", name="Add Rules")
    dialog.get_by_label("Scale out").check()
    dialog.get_by_label("Metric Source").select_option("INFERENCE_FRAMEWORK")
    dialog.get_by_label("Metric Name").fill("llamacpp:requests_processing")
    dialog.get_by_label("Comparator").select_option("GREATER_THAN_OR_EQUAL")
    dialog.get_by_label("Threshold").fill("4")
    dialog.get_by_label("Step Size").fill("2")
    dialog.get_by_label("Min Replicas").fill("1")
    dialog.get_by_label("Max Replicas").fill("3")
    dialog.get_by_label("CoolDown Seconds").fill("120")
    shot(page, "08-add-rule", full_page=False)
    assert_every_control_named(page)
    dialog.get_by_role("button", name="Add", exact=True).click()
    row = page.locator("tr[data-rule='llamacpp:requests_processing']")
    row.wait_for()
    assert "GREATER_THAN_OR_EQUAL 4" in row.inner_text() and "+2" in row.inner_text()
    row.get_by_role("button", name="Edit rule").click()
    dialog = page.get_by_role("dialog", name="Edit Rule")
    dialog.get_by_label("Scale in").check()
    dialog.get_by_label("Threshold").fill("abc")
    dialog.get_by_role("button", name="Save").click()
    dialog.locator(".field-error").filter(has_text="threshold").wait_for()  # the server's reason, by the field
    dialog.get_by_label("Threshold").fill("0.5")
    dialog.get_by_role("button", name="Save").click()
    row.filter(has_text="GREATER_THAN_OR_EQUAL 0.5").wait_for()
    assert "Scale in" in row.inner_text() and "-2" in row.inner_text()
    shot(page, "09-rules")
    row.get_by_role("button", name="Delete rule").click()
    row.wait_for(state="detached")


def test_keyboard_only(console: Console, page: Any) -> None:
    """Modals open, trap focus, close with Escape and give focus back; links and buttons work with Enter."""
    login_with_keys(page, console)
    page.get_by_role("link", name="Start Service").focus()
    page.keyboard.press("Enter")
    page.get_by_role("heading", name="Start Service").wait_for()
    page.goto(STATE["detail"])
    button = page.get_by_role("button", name="Generate Token")
    button.focus()
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="Generate Token")
    dialog.wait_for()
    assert page.evaluate("document.activeElement.id") == "token-expiry"  # focus moved into the dialog
    for _ in range(6):  # Tab cycles inside the dialog
        page.keyboard.press("Tab")
        assert page.evaluate("!!document.activeElement.closest('[role=dialog]')")
    page.keyboard.press("Escape")
    dialog.wait_for(state="detached")
    assert page.evaluate("document.activeElement.textContent.trim()") == "Generate Token"


def test_edit_sends_only_what_changed_and_rolls(console: Console, page: Any, same_origin_only: list[str]) -> None:
    login_with_keys(page, console)
    page.locator("tr[data-service='echo-form']").get_by_role("link", name="Edit echo-form").click()
    page.get_by_role("heading", name="Edit echo-form").wait_for()
    assert page.get_by_label("Service name").is_disabled()
    assert page.get_by_label("Variable value 1").input_value() == "hello"  # pre-filled
    page.get_by_label("Variable value 1").fill("bonjour")
    shot(page, "10-edit")
    with page.expect_request(lambda r: r.method == "PATCH") as sent:
        page.get_by_role("button", name="Confirm").click()
    assert json.loads(sent.value.post_data or "{}") == {"environ": {"GREETING": "bonjour"}}
    page.get_by_role("heading", name="echo-form").wait_for()
    page.locator(".info dd").filter(has_text="2").first.wait_for()
    wait_for(lambda: page.locator(".rollout").count() == 0
             and "HEALTHY" in page.locator(".info .badge").inner_text(), 90, "the rolling update to finish")
    info = console.cli_json("service", "info", "echo-form")
    assert info["revision"] == 2 and info["environ"] == {"GREETING": "bonjour"}


def test_broken_definition_error_as_text_then_fix_and_retry(console: Console, page: Any, tmp_path: Any) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "model-definition.yaml").write_text(
        "models:\n  - name: broken\n    model_path: /models\n    service:\n"
        "      start_command: python3 -c \"import sys; sys.stderr.write('<img src=x onerror=window.__xss=2>'); "
        "sys.exit(3)\"\n      port: 8000\n      health_check:\n        path: /health\n        initial_delay: 5\n")
    console.cli("folder", "create", "broken")
    console.cli("folder", "upload", "broken", str(folder))
    console.cli("service", "create", "broken", "1", "--name", "broken-svc", "-r", "cpu=0.25", "-r", "mem=64m")
    sid = console.cli_json("service", "info", "broken-svc")["endpoint_id"]
    login_with_keys(page, console)
    page.goto(f"{console.url}/#/services/{sid}")
    error = page.locator("td.route-error").first
    error.get_by_text("stderr").wait_for(timeout=HEALTHY_TIMEOUT)
    error.locator("summary").click()
    assert "<img src=x onerror=window.__xss=2>" in error.inner_text()
    assert page.evaluate("window.__xss") is None and page.locator("td.route-error img").count() == 0
    shot(page, "11-route-error")
    # fix the file, then Clear error and Retry: the definition is read again and the replica comes up
    console.cli("folder", "upload", "broken", str(ECHO))
    page.get_by_role("button", name="Clear error and Retry").click()
    page.get_by_text("Errors cleared; retrying.").wait_for()
    page.locator(".info .badge").filter(has_text="HEALTHY").wait_for(timeout=HEALTHY_TIMEOUT)
    page.locator("table.routes tbody tr").filter(has_text="running").filter(has_text="healthy").first.wait_for()
    shot(page, "11b-route-fixed")


def test_phone_width_layout(console: Console, browser: Any) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    login_with_keys(page, console)
    page.locator("tr[data-service='echo-form']").wait_for()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1  # no sideways scrolling
    shot(page, "12-services-phone")
    context.close()


def test_terminate(console: Console, page: Any, same_origin_only: list[str]) -> None:
    login_with_keys(page, console)
    row = page.locator("tr[data-service='echo-form']")
    row.get_by_role("button", name="Terminate echo-form").click()
    dialog = page.get_by_role("dialog", name="Terminate service")
    shot(page, "13-terminate", full_page=False)
    dialog.get_by_role("button", name="Delete").click()
    row.wait_for(state="detached", timeout=60_000)
    page.get_by_label("Destroyed").check()
    page.locator("tr[data-service='echo-form']").wait_for(timeout=60_000)
