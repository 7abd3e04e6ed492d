"""The console's API Keys and Usage pages in Chromium against a real `moorage up` (docs/console.md, "API Keys",
"Usage"): a key created in the page (shown once, copied) works against the gateway for the model it allows and
no other, its limits are edited, it is refused after Revoke; the Usage page charts and tabulates that traffic by
day, model and key, and downloads it as CSV; both pages at phone width. Also the detail page's latency
percentiles, an admin's folder list with owners, and `moorage console login-link`."""

from __future__ import annotations

import csv
import io
import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.console.conftest import ECHO, Console, assert_every_control_named, login_with_keys, shot, unique
from tests.e2e.harness import moorage, wait_for

pytestmark = pytest.mark.e2e
SERVICE = "echo-keys"
STATE: dict[str, Any] = {}


@pytest.fixture(scope="module")
def echo_service(console: Console) -> dict[str, Any]:
    console.cli("service", "create", "echo", "1", "--name", SERVICE, "-r", "cpu=0.25", "-r", "mem=64m")
    return wait_for(lambda: (i := console.cli_json("service", "info", SERVICE)) and i["status"] == "HEALTHY" and i,
                    120, f"{SERVICE} HEALTHY", on_timeout=console.daemons.logs)


def _gateway(console: Console, key: str, model: str) -> int:
    assert console.gateway_url
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hello gateway"}]}).encode()
    req = urllib.request.Request(console.gateway_url + "/chat/completions", data=body, method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_api_key_created_in_the_page_works_then_is_refused_after_revoke(console: Console, browser: Any,
                                                                        echo_service: dict[str, Any]) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 800},
                                  permissions=["clipboard-read", "clipboard-write"])
    page = context.new_page()
    login_with_keys(page, console)
    page.get_by_role("link", name="API Keys").click()
    page.get_by_role("heading", name="API Keys").wait_for()
    page.get_by_role("button", name="Create API key").click()
    dialog = page.get_by_role("dialog", name="Create API key")
    dialog.get_by_role("button", name="Create").click()
    dialog.locator("#key-name-error").filter(has_text="required").wait_for()
    name = unique("team")
    dialog.get_by_label("Name").fill(name)
    dialog.get_by_label(SERVICE).check()  # the models are the user's services
    dialog.get_by_label("Requests per minute").fill("0")
    dialog.get_by_label("Priority").select_option("high")
    dialog.get_by_label("Metadata").fill("team=ml")
    dialog.get_by_role("button", name="Create").click()
    dialog.locator("#key-rpm-error").wait_for()  # the server's rule (1..), shown under the field
    dialog.get_by_label("Requests per minute").fill("100")
    assert_every_control_named(page)
    dialog.get_by_role("button", name="Create").click()
    key = dialog.locator("#new-api-key").inner_text()
    assert key.startswith("sk-")
    dialog.get_by_text("It is shown this once").wait_for()
    dialog.get_by_role("button", name="Copy the API key").click()
    assert page.evaluate("navigator.clipboard.readText()") == key
    shot(page, "30-api-key-created", full_page=False)
    dialog.get_by_role("button", name="Done").click()

    row = page.locator(f"tr[data-key='{name}']")
    row.wait_for()
    text = row.inner_text()
    assert key[:7] in text and SERVICE in text and "100 req/min" in text and "high" in text and key not in text
    assert key not in page.content()  # shown once: gone from the page after Done

    assert _gateway(console, key, SERVICE) == 200
    assert _gateway(console, key, "echo-chat-not-allowed") == 404
    for _ in range(3):
        assert _gateway(console, key, SERVICE) == 200

    row.get_by_role("button", name=f"Edit limits of {name}").click()
    dialog = page.get_by_role("dialog", name=f"Edit limits of {name}")
    assert dialog.get_by_label("Requests per minute").input_value() == "100"
    dialog.get_by_label("Tokens per minute").fill("50000")
    dialog.get_by_role("button", name="Save").click()
    dialog.wait_for(state="detached")
    row.filter(has_text="50000 tok/min").wait_for()

    # the usage is recorded; the list shows when the key was last used
    def used() -> bool:
        page.reload()
        page.locator(f"tr[data-key='{name}']").wait_for()
        return "never" not in page.locator(f"tr[data-key='{name}'] td[data-label='Last used']").inner_text()
    wait_for(used, 20, "the key's last use shown")
    shot(page, "31-api-keys")
    assert_every_control_named(page)

    row = page.locator(f"tr[data-key='{name}']")
    row.get_by_role("button", name=f"Revoke {name}").click()
    dialog = page.get_by_role("dialog", name="Revoke API key")
    dialog.get_by_text(name).wait_for()
    dialog.get_by_role("button", name="Revoke").click()
    dialog.wait_for(state="detached")
    row.wait_for(state="detached")  # revoked keys are hidden unless asked for
    page.get_by_label("Show revoked keys").check()
    page.locator(f"tr[data-key='{name}']").filter(has_text="revoked").wait_for()
    wait_for(lambda: _gateway(console, key, SERVICE) == 401, 5, "the gateway refusing the revoked key")
    STATE["key_name"] = name
    context.close()


def test_usage_page_charts_table_and_csv(console: Console, page: Any) -> None:
    name = STATE["key_name"]
    login_with_keys(page, console)
    page.get_by_role("link", name="Usage").click()
    page.get_by_role("heading", name="Usage").wait_for()
    assert page.get_by_label("Time range").input_value() == "7d"
    tokens = page.locator("figure.chart").filter(has_text="Tokens per model").get_by_role("img")
    wait_for(lambda: f"{SERVICE}: " in (tokens.get_attribute("aria-label") or ""), 10, "the per-model chart")
    page.locator("figure.chart").filter(has_text="Requests per day").wait_for()
    table = page.locator("table.usage")
    model_row = table.locator("tr").filter(has_text=SERVICE)
    cells = model_row.locator("td").all_inner_texts()
    # day, model, requests: 4 went through; the 404 reached no replica and is not recorded
    assert cells[1] == SERVICE and int(cells[2]) == 4, cells
    page.get_by_label("API key").check()
    table.locator("tr").filter(has_text=name).wait_for()  # the key's name, not its id
    page.get_by_label("User", exact=True).check()  # admins: by user, shown by e-mail
    table.locator("tr").filter(has_text="admin@moorage.local").wait_for()
    shot(page, "32-usage")
    assert_every_control_named(page)
    with page.expect_download() as download:
        page.get_by_role("button", name="Download CSV").click()
    rows = list(csv.DictReader(io.StringIO(open(download.value.path(), encoding="utf-8").read())))
    ours = [r for r in rows if r["key_name"] == name]
    assert ours and ours[0]["model"] == SERVICE and int(ours[0]["requests"]) == 4, rows
    assert set(rows[0]) >= {"day", "model", "key", "key_name", "user", "user_email", "requests", "prompt_tokens",
                            "total_tokens"}
    page.get_by_label("Time range").select_option("1d")
    table.locator("tr").filter(has_text=name).wait_for()
    page.get_by_label("Time range").select_option("custom")  # whole UTC days, From..To
    page.get_by_label("From", exact=True).fill("2020-01-01")
    page.get_by_label("To", exact=True).fill("2020-01-31")
    table.get_by_text("No usage in this range.").wait_for()
    assert page.locator("figure.chart").filter(has_text="Tokens per day").locator(".bar").count() == 31
    today = time.strftime("%Y-%m-%d", time.gmtime())
    page.get_by_label("To", exact=True).fill(today)
    page.get_by_role("alert").filter(has_text="at most a year apart").wait_for()  # over a year: said, not sent
    page.get_by_label("From", exact=True).fill(today)
    table.locator("tr").filter(has_text=name).wait_for()


def test_phone_width_api_keys_and_usage(console: Console, browser: Any) -> None:
    console.cli("key", "create", unique("phone"), "--models", SERVICE, "--rpm", "10", "--expires", "30d")
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    login_with_keys(page, console)
    for link, heading, name in (("API Keys", "API Keys", "33-api-keys-phone"), ("Usage", "Usage", "34-usage-phone")):
        page.get_by_role("link", name=link).click()
        page.get_by_role("heading", name=heading).wait_for()
        page.locator("table tbody tr").first.wait_for()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{link}: the page scrolls sideways ({width} px)"
        shot(page, name)
    context.close()


def test_usage_and_key_form_pure_parts(console: Console, page: Any) -> None:
    """The pages' pure parts, run in the browser: CSV quoting (and no spreadsheet formula from a name), cost
    columns kept when the API adds them, empty days filled, and an edit that sends only what changed."""
    login_with_keys(page, console)
    out = page.evaluate("""async () => {
      const u = await import("/static/js/usage.js");
      const k = await import("/static/js/apikeys.js");
      const rows = [{model: 'a,"b"', requests: 1, total_tokens: 2, cost: 0.5}, {model: "=1+2", requests: 3}];
      const key = {name: "k", allowed_models: ["m"], priority: "standard", rpm: 10, tpm: null, max_parallel: null,
                   budget: null, expires_at: null, metadata: {}};
      return {cols: u.usageColumns(["model"], rows), csv: u.toCsv(["model", "requests"], rows),
              days: u.fillDays([{name: "2026-01-02", requests: 5, total_tokens: 1}], 3,
                               Date.parse("2026-01-03T12:00:00Z")),
              edit: k.keyBody({name: "k", models: ["m"], priority: "high", rpm: "", tpm: "5", max_parallel: "",
                               budget: "", expires: "", metadata: ""}, key)};
    }""")
    assert out["cols"] == ["model", "requests", "prompt_tokens", "completion_tokens", "total_tokens", "errors", "cost"]
    assert out["csv"] == 'model,requests\r\n"a,""b""",1\r\n\'=1+2,3\r\n'
    assert [d["name"] for d in out["days"]] == ["2026-01-01", "2026-01-02", "2026-01-03"]
    assert out["days"][1]["requests"] == 5 and out["days"][0]["requests"] == 0
    assert out["edit"] == {"priority": "high", "rpm": None, "tpm": 5}


def test_detail_page_charts_latency_percentiles(console: Console, page: Any, echo_service: dict[str, Any]) -> None:
    """The app proxy's per-endpoint latency histogram reaches the detail page as p50 / p95 / p99 charts."""
    token = console.cli("service", "token", SERVICE, "--duration", "1h").stdout.strip()
    url = echo_service["service_endpoint"]
    login_with_keys(page, console)
    page.goto(f"{console.url}/#/services/{echo_service['endpoint_id']}")
    p50 = page.locator("figure.chart").filter(has_text="Latency p50").locator("strong")
    assert p50.inner_text() == "—"  # no request ended yet in the window

    def charted() -> bool:
        for _ in range(3):
            body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
            req = urllib.request.Request(url + "/v1/chat/completions", data=body, method="POST", headers={
                "Content-Type": "application/json", "Authorization": f"BackendAI {token}"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert resp.status == 200
        return p50.inner_text() != "—"
    wait_for(charted, 30, "the p50 latency charted")
    value = float(p50.inner_text().split()[0])
    assert 0 < value < 10_000 and p50.inner_text().endswith("ms")
    for q in ("p95", "p99"):
        chart = page.locator("figure.chart").filter(has_text=f"Latency {q}")
        wait_for(lambda c=chart: c.locator("strong").inner_text() != "—", 10, f"the {q} latency charted")
        assert chart.get_by_role("img").get_attribute("aria-label").startswith(f"Latency {q}: now")
    page.get_by_role("heading", name="Metrics").scroll_into_view_if_needed()
    shot(page, "35-latency-metrics", full_page=False)
    out = page.evaluate("""async () => {
      const m = await import("/static/js/metrics.js");
      return [m.quantile([0.1, 1], [0, 10, 0], 0.5), m.quantile([0.1, 1], [0, 0, 4], 0.99),
              m.quantile([0.1, 1], [0, 0, 0], 0.5),
              m.latencyDelta({latency: {bounds: [1], counts: [2, 1]}}, {latency: {bounds: [1], counts: [5, 1]}}),
              m.latencyDelta({latency: {bounds: [1], counts: [9, 1]}}, {latency: {bounds: [1], counts: [5, 1]}})];
    }""")
    assert abs(out[0] - 0.55) < 1e-9 and out[1] == 1 and out[2] is None
    assert out[3] == {"bounds": [1], "counts": [3, 0]} and out[4] is None  # a restarted proxy: no window


def test_admin_sees_folder_owners_and_cli_login_link(console: Console, browser: Any) -> None:
    """An admin's folder list names each folder's owner by e-mail; `moorage console login-link` prints a fresh
    single-use URL that logs a browser in as the connection file's user."""
    email = f"{unique('owner')}@example.com"
    ak, sk = console.create_user(email)
    folder = unique("theirs")
    moorage(console.user_env(ak, sk), "folder", "create", folder)
    out = console.cli("console", "login-link")
    url = out.stdout.strip()
    assert url.startswith(console.url + "/console/login-link?token=") and "\n" not in url
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto(url)
    page.get_by_role("heading", name="Model Serving").wait_for()
    assert "token=" not in page.url  # no secret left in the URL
    page.get_by_role("link", name="Data").click()
    page.get_by_role("heading", name="Data / model folders").wait_for()
    assert page.locator(f"tr[data-folder='{folder}']").count() == 0  # the admin's own by default
    page.get_by_label("Every user's folders").check()
    row = page.locator(f"tr[data-folder='{folder}']")
    row.wait_for()
    assert row.locator("td[data-label='Owner']").inner_text() == email
    shot(page, "36-folders-owners")
    assert_every_control_named(page)
    context.close()
    again = browser.new_context()  # the link is single use
    used = again.new_page()
    used.goto(url)
    used.get_by_text("This login link was already used or has expired").wait_for()
    again.close()


SERVICE_DEF = """[environment]
image = "registry.example.com/echo:1"

[resource_slots]
cpu = 0.5
mem = "128m"

[environ]
GREETING = "from-file"

[custom.environ]
VARIANT_ONLY = "yes"
"""


def test_launcher_prefills_from_service_definition(console: Console, page: Any, tmp_path: Any) -> None:
    """The chosen folder's service-definition.toml (read through the folder file API) fills the form, each value
    marked as coming from the file; what the user typed is kept when another folder is chosen."""
    import shutil

    folder = tmp_path / "echo-def"
    shutil.copytree(ECHO, folder)
    (folder / "service-definition.toml").write_text(SERVICE_DEF)
    console.cli("folder", "create", "echo-def")
    console.cli("folder", "upload", "echo-def", str(folder))
    login_with_keys(page, console)
    page.get_by_role("link", name="Start Service").click()
    page.get_by_label("Model Storage To Mount").select_option("echo-def")
    page.get_by_role("status").filter(has_text="Pre-filled from echo-def/service-definition.toml").wait_for()
    assert page.get_by_label("Environment / Version").input_value() == "registry.example.com/echo:1"
    assert page.locator("#image-hint").inner_text() == "From service-definition.toml"
    assert page.get_by_label("Resource Presets").input_value() == "custom"
    assert page.locator("#preset-hint").inner_text() == "From service-definition.toml"
    assert page.get_by_label("CPU").input_value() == "0.5" and page.get_by_label("Memory").input_value() == "128m"
    env = {page.get_by_label(f"Variable name {i}").input_value(): page.get_by_label(f"Variable value {i}").input_value()
           for i in (1, 2)}
    assert env == {"GREETING": "from-file", "VARIANT_ONLY": "yes"}  # root < the runtime variant's table
    assert page.locator(".env-row .from-file").count() == 2
    shot(page, "37-launcher-prefilled")
    assert_every_control_named(page)

    page.get_by_label("Environment / Version").fill("mine:2")  # typed by the user: kept
    page.get_by_label("Model Storage To Mount").select_option("echo")  # a folder without the file
    page.get_by_label("Variable name 1").wait_for(state="detached")  # the file's variables leave with it
    assert page.get_by_label("Environment / Version").input_value() == "mine:2"
    assert page.get_by_label("Resource Presets").input_value() == "cpu-small"  # back to the default
    assert page.get_by_role("status").filter(has_text="Pre-filled").count() == 0


def test_api_keys_by_keyboard(console: Console, page: Any) -> None:
    """Create API key by keyboard alone: the dialog takes focus, Enter submits, Escape closes and gives focus
    back to the button that opened it."""
    login_with_keys(page, console)
    page.get_by_role("link", name="API Keys").click()
    page.get_by_role("heading", name="API Keys").wait_for()
    page.get_by_role("button", name="Create API key").focus()
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="Create API key")
    dialog.wait_for()
    assert page.evaluate("document.activeElement.id") == "key-name"
    name = unique("kbd")
    page.keyboard.type(name)
    page.keyboard.press("Tab")  # on to the model checkboxes: focus stays inside the dialog
    assert page.evaluate("!!document.activeElement.closest('[role=dialog]')")
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Enter")
    dialog.locator("#new-api-key").wait_for()
    page.keyboard.press("Escape")
    dialog.wait_for(state="detached")
    assert page.evaluate("document.activeElement.textContent") == "Create API key"
    page.locator(f"tr[data-key='{name}']").wait_for()
