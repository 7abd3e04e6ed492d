"""The console's chat page (LLM Chat Test) in Chromium against a real `moorage up` (docs/console.md, "Chat page"):
answers stream token by token through the console's relay and render as Markdown, with TTFT and tokens/s;
conversations are saved per user, reloaded, continued, readable back through the API, renamed, exported and
deleted; Stop closes the stream and the echo replica records the disconnect; model output carrying markup runs
no script; a custom base URL the operator did not allow is refused; and one answer streams from the real
SmolLM2 replica (the `moorage demo` service)."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from typing import Any

import pytest

from tests.console.conftest import Console, login_with_keys, shot
from tests.e2e.harness import wait_for

pytestmark = pytest.mark.e2e
SERVICE = "echo-chat"
CHUNK_DELAY = 0.25  # s between the echo replica's words: slow enough to press Stop mid-answer
# the page records every text the answer being generated shows (to prove it arrived in pieces)
OBSERVE = """() => { window.__seen = new Set();
  new MutationObserver(() => { const el = document.querySelector('.live .md');
    if (el && el.textContent) window.__seen.add(el.textContent); })
  .observe(document.body, {subtree: true, childList: true, characterData: true}); }"""


@pytest.fixture(scope="module")
def echo_service(console: Console) -> dict[str, Any]:
    console.cli("service", "create", "echo", "1", "--name", SERVICE, "-e", f"ECHO_CHUNK_DELAY={CHUNK_DELAY}",
                "-r", "cpu=0.25", "-r", "mem=64m")
    return wait_for(lambda: (i := console.cli_json("service", "info", SERVICE)) and i["status"] == "HEALTHY" and i,
                    120, f"{SERVICE} HEALTHY", on_timeout=console.daemons.logs)


def _cancelled(info: dict[str, Any]) -> int:
    """The echo replica's count of streams its client left before the end (read on the replica's own port)."""
    route = next(r for r in info["routes"] if r["port"])
    with urllib.request.urlopen(f"http://{route['host'] or '127.0.0.1'}:{route['port']}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return int(float(re.search(r"^echo_stream_cancelled_total (\S+)$", text, re.M).group(1)))  # type: ignore[union-attr]


def _open_chat(page: Any, console: Console, service_id: str) -> None:
    login_with_keys(page, console)
    page.goto(f"{console.url}/#/chat?service={service_id}")
    page.get_by_role("heading", name="LLM Chat Test").wait_for()
    _chosen(page, service_id)


def _chosen(page: Any, service_id: str) -> None:
    """Wait until the services are listed and the first card has ``service_id`` chosen."""
    page.wait_for_function("(id) => document.querySelector('#chat-model-1').value === id", arg=service_id)


def _send(page: Any, text: str) -> None:
    page.get_by_role("textbox", name="Message", exact=True).fill(text)
    page.get_by_role("button", name="Send").click()


def test_chat_streams_markdown_and_saves_the_conversation(console: Console, page: Any, echo_service: dict[str, Any],
                                                          same_origin_only: list[str]) -> None:
    login_with_keys(page, console)
    # LLM Chat Test on the list opens the chat page with that service chosen
    page.locator(f"tr[data-service='{SERVICE}']").get_by_role("link", name=f"LLM Chat Test with {SERVICE}").click()
    page.get_by_role("heading", name="LLM Chat Test").wait_for()
    _chosen(page, echo_service["endpoint_id"])
    page.evaluate(OBSERVE)
    _send(page, "hello **bold** and `code` and more words")
    answer = page.locator(".msg-assistant").first
    answer.locator(".chat-stats").filter(has_text="tokens/s").wait_for()
    assert answer.locator("strong").inner_text() == "bold" and answer.locator("code").inner_text() == "code"
    assert page.evaluate("window.__seen.size") >= 3  # shown word by word while it streamed
    stats = answer.locator(".chat-stats").inner_text()
    assert re.search(r"TTFT \d+ ms", stats) and re.search(r"[\d.]+ tokens/s", stats) and "8 tokens" in stats, stats

    # saved on the server, listed, and continued after a reload
    title = "hello **bold** and `code` and more words"
    page.locator(f"li[data-conversation='{title}']").wait_for()
    conv_id = page.url.split("conversation=")[1]
    page.reload()
    page.locator(".msg-assistant strong").filter(has_text="bold").wait_for()
    _send(page, "second question")
    page.locator(".msg-assistant").nth(1).locator(".chat-stats").filter(has_text="tokens/s").wait_for()
    shot(page, "24-chat")

    def stored() -> dict[str, Any] | None:
        resp = page.request.get(f"{console.url}/api/conversations/{conv_id}")
        body = resp.json()
        return body if resp.ok and body["message_count"] == 4 else None

    conv = wait_for(stored, 10, "the conversation with 4 messages")
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant", "user", "assistant"]
    assert conv["messages"][3]["content"] == "echo: second question" and conv["messages"][3]["model_index"] == 0
    assert conv["messages"][1]["stats"]["ttft_ms"] is not None
    assert conv["models"] == [{"service_id": echo_service["endpoint_id"], "model": None, "base_url": None}]
    exported = page.request.get(f"{console.url}/api/conversations/{conv_id}/export?format=markdown").text()
    assert "echo: second question" in exported
    as_json = json.loads(page.request.get(f"{console.url}/api/conversations/{conv_id}/export?format=json").text())
    assert [m["content"] for m in as_json["messages"]][2:] == ["second question", "echo: second question"]

    item = page.locator("li[data-conversation]").first
    item.get_by_role("button", name=f"Rename {title}").click()
    page.get_by_role("dialog").get_by_label("Title").fill("Renamed chat")
    page.get_by_role("dialog").get_by_role("button", name="Rename").click()
    page.locator("li[data-conversation='Renamed chat']").wait_for()
    page.locator("li[data-conversation='Renamed chat']").get_by_role("button", name="Delete Renamed chat").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    page.locator("li[data-conversation='Renamed chat']").wait_for(state="detached")
    assert page.request.get(f"{console.url}/api/conversations/{conv_id}").status == 404


def test_stop_cancels_generation_on_the_replica(console: Console, page: Any, echo_service: dict[str, Any]) -> None:
    before = _cancelled(echo_service)
    _open_chat(page, console, echo_service["endpoint_id"])
    words = " ".join(f"w{i}" for i in range(80))  # 80 words at 0.25 s: 20 s if nobody stops it
    _send(page, words)
    page.locator(".live .md").filter(has_text="w2").wait_for()
    started = time.monotonic()
    page.get_by_role("button", name="Stop").click()
    answer = page.locator(".msg-assistant").first
    answer.locator(".badge").filter(has_text="Stopped").wait_for()
    assert "w79" not in answer.inner_text()
    # the replica saw the client go away, long before the answer would have ended
    wait_for(lambda: _cancelled(echo_service) > before, 10, "the replica recording the disconnect",
             on_timeout=console.daemons.logs)
    assert time.monotonic() - started < 15


def test_model_output_cannot_run_script(console: Console, page: Any, echo_service: dict[str, Any]) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    _open_chat(page, console, echo_service["endpoint_id"])
    payload = ('<img src=x onerror="window.__xss=1;alert(1)"> <script>window.__xss=2;alert(2)</script> '
               '<a href="javascript:window.__xss=3">link</a> <svg onload="window.__xss=4"></svg> '
               '<iframe src="javascript:alert(5)"></iframe> [md](javascript:alert(6))')
    _send(page, payload)
    answer = page.locator(".msg-assistant").first
    answer.locator(".chat-stats").filter(has_text="tokens/s").wait_for()
    page.wait_for_timeout(500)
    assert page.evaluate("window.__xss") is None and not dialogs
    md = answer.locator(".md")
    assert md.locator("img, script, svg, iframe").count() == 0
    hrefs = [a.get_attribute("href") or "" for a in md.locator("a").all()]
    assert not [h for h in hrefs if h.lower().startswith("javascript")], hrefs
    assert "link" in md.inner_text()
    # the user's own message is shown as text, markup and all
    assert "<script>" in page.locator(".msg-user").first.inner_text()


def test_sse_parser_and_code_highlighter(console: Console, page: Any) -> None:
    """The page's pure parts, run in the browser: SSE events split across reads, and highlighted code that stays
    escaped text."""
    login_with_keys(page, console)
    out = page.evaluate("""async () => {
      const chat = await import("/static/js/chat.js");
      const md = await import("/static/js/markdown.js");
      const a = chat.parseSse('data: {"x":1}\\r\\n\\ndata: [DO');
      const b = chat.parseSse(a.rest + 'NE]\\n\\n');
      return {events: [...a.events, ...b.events], rest: b.rest,
              code: md.highlight('if x < 1: print("<b>") # <i>'),
              html: md.renderMarkdown("```python\\nx = '<script>'\\n```")};
    }""")
    assert out["events"] == ['{"x":1}', "[DONE]"] and out["rest"] == ""
    assert out["code"] == ('<span class="tok-keyword">if</span> x &lt; <span class="tok-number">1</span>: print('
                           '<span class="tok-string">&quot;&lt;b&gt;&quot;</span>) '
                           '<span class="tok-comment"># &lt;i&gt;</span>')
    assert "<script>" not in out["html"] and "&lt;script&gt;" in out["html"] and "tok-string" in out["html"]


def test_phone_width_chat(console: Console, browser: Any, echo_service: dict[str, Any]) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    try:
        _open_chat(page, console, echo_service["endpoint_id"])
        _send(page, "a rather long message to see that it wraps on a narrow phone screen")
        page.locator(".msg-assistant .chat-stats").filter(has_text="tokens/s").wait_for()
        assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1  # no sideways scrolling
        shot(page, "27-chat-phone")
    finally:
        context.close()


def test_another_user_cannot_chat_with_the_service(console: Console, browser: Any,
                                                   echo_service: dict[str, Any]) -> None:
    access_key, secret_key = console.create_user("chat-other@example.com")
    context = browser.new_context()
    page = context.new_page()
    try:
        login_with_keys(page, console, access_key, secret_key)
        status = page.evaluate("""async (id) => {
          const session = await (await fetch("/console/session")).json();
          const resp = await fetch(`/api/services/${id}/chat/completions`, {method: "POST",
            headers: {"Content-Type": "application/json", "X-Moorage-CSRF": session.csrf_token},
            body: JSON.stringify({messages: [{role: "user", content: "hi"}], stream: true})});
          return resp.status;
        }""", echo_service["endpoint_id"])
        assert status == 404  # as for every object of another user's: not even its existence
        page.goto(f"{console.url}/#/chat?service={echo_service['endpoint_id']}")
        page.get_by_role("heading", name="LLM Chat Test").wait_for()
        assert page.locator(f"#chat-model-1 option[value='{echo_service['endpoint_id']}']").count() == 0
    finally:
        context.close()


def test_custom_base_url_not_allowed_is_refused(console: Console, page: Any) -> None:
    login_with_keys(page, console)
    page.goto(f"{console.url}/#/chat")
    page.get_by_label("Model for chat 1").select_option("__custom")
    page.get_by_label("Base URL").fill(console.manager_url + "/v1")  # the manager's own network: SSRF
    page.get_by_label("API token").fill("sk-secret-never-stored")
    _send(page, "hi")
    page.locator(".chat-card .error-box").filter(has_text="does not relay to that address").wait_for()
    assert "sk-secret" not in json.dumps(page.evaluate("Object.assign({}, localStorage)"))


def test_chat_with_the_real_smollm2_replica(console: Console, page: Any, echo_service: dict[str, Any]) -> None:
    """SmolLM2 streams an answer; an echo card beside it gets the same input (the synchronised input)."""
    console.cli("demo", "--name", "smol-chat", "--wait", "300", timeout=400)
    service_id = console.cli_json("service", "info", "smol-chat")["endpoint_id"]
    _open_chat(page, console, service_id)
    page.get_by_role("button", name="Add model").click()
    page.get_by_label("Model for chat 2").select_option(echo_service["endpoint_id"])
    page.get_by_text("Parameters").click()
    page.get_by_label("Temperature").fill("0")
    page.get_by_label("Max tokens").fill("24")
    smol, echo = page.locator("[data-card='1']"), page.locator("[data-card='2']")
    # a 135M model now and then answers a prompt with an immediate end of text: up to three prompts
    for n, prompt in enumerate(("Count from one to ten in words.", "List three fruits.", "Write about the sea.")):
        page.evaluate(OBSERVE)  # the first card's answer in progress
        _send(page, prompt)
        answer = smol.locator(".msg-assistant").nth(n)
        answer.locator(".chat-stats").filter(has_text="tokens/s").wait_for(timeout=180_000)
        echo.locator(".msg-assistant").nth(n).filter(has_text=f"echo: {prompt}").wait_for()
        if answer.locator(".md").inner_text().strip() and page.evaluate("window.__seen.size") >= 3:
            break
    else:
        raise AssertionError("SmolLM2 streamed no answer in pieces")
    assert re.search(r"TTFT \d+ ms · [\d.]+ tokens/s", answer.locator(".chat-stats").inner_text())
    page.get_by_text("Parameters").click()
    shot(page, "25-chat-compare")
