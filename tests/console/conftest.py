"""Browser tests of the web console (docs/console.md): Playwright drives Debian's Chromium against a real
`moorage up` (one per test module). Screenshots land in test-artifacts/console/ (gitignored)."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.e2e.harness import PYTHON, REPO, Daemons, free_port_block, moorage, wait_for
from tests.services import free_port, wait_port

CHROMIUM = "/usr/lib/chromium/chromium"  # Debian's package (.ci/install-system-deps); Playwright's download is not used
ARTIFACTS = REPO / "test-artifacts" / "console"
ECHO = REPO / "configs" / "models" / "echo"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Chromium for one test module. Module-scoped on purpose (not pytest-playwright's session-wide browser):
    the sync API keeps its event loop marked as running while it is open, which would break every asyncio test
    that runs after these in the same pytest session."""
    if not os.access(CHROMIUM, os.X_OK):
        raise AssertionError(f"{CHROMIUM} is missing: run .ci/install-system-deps (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        yield context.new_page()
    finally:
        context.close()


@dataclass
class Console:
    url: str  # the console's origin
    manager_url: str
    access_key: str
    secret_key: str
    login_url: str  # the one-time link `moorage up` printed
    env: dict[str, str]  # for the moorage CLI (as the admin)
    data_dir: Path
    daemons: Daemons
    gateway_url: str | None = None  # the OpenAI-compatible gateway `moorage up` serves (docs/gateway.md)

    def cli(self, *args: str, **kw: Any) -> Any:
        return moorage(self.env, *args, **kw)

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def create_user(self, email: str) -> tuple[str, str]:
        """A second user in the running instance's database; (access key, secret key)."""
        secrets = json.loads((self.data_dir / "secrets.json").read_text())
        env = {**self.env, "MOORAGE_MANAGER__DB__URL": f"sqlite+aiosqlite:///{self.data_dir / 'moorage.db'}",
               "MOORAGE_MANAGER__SECRETS__KEYPAIR_ENCRYPTION_KEY": secrets["keypair_encryption_key"]}
        out = json.loads(moorage(env, "admin", "create-user", email).stdout)
        return out["access_key"], out["secret_key"]

    def user_env(self, access_key: str, secret_key: str) -> dict[str, str]:
        return {**self.env, "MOORAGE_ENDPOINT": self.manager_url, "MOORAGE_ACCESS_KEY": access_key,
                "MOORAGE_SECRET_KEY": secret_key}


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    tmp = tmp_path_factory.mktemp("console")
    data_dir = tmp / "data"
    port, console_port = free_port(), free_port()
    proxy_base = free_port_block(8)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
    env["MOORAGE_DATA_DIR"] = str(data_dir)
    daemons = Daemons(tmp)
    daemons.start("up", [PYTHON, "-m", "manager.cli.main", "up", "--port", str(port), "--console-port",
                         str(console_port), "--gateway-port", str(free_port()),
                         "--proxy-ports", f"{proxy_base}-{proxy_base + 7}"], env)
    try:
        wait_port("127.0.0.1", console_port, 60)
        info = wait_for(lambda: json.loads((data_dir / "cluster.json").read_text())
                        if (data_dir / "cluster.json").exists() else None, 30, "cluster.json",
                        on_timeout=daemons.logs)
        c = Console(url=f"http://127.0.0.1:{console_port}", manager_url=info["manager_url"],
                    access_key=info["access_key"], secret_key=info["secret_key"],
                    login_url=info["console_login_url"], env=env, data_dir=data_dir, daemons=daemons,
                    gateway_url=info.get("gateway_url"))
        c.cli("folder", "create", "echo")
        c.cli("folder", "upload", "echo", str(ECHO))
        yield c
    finally:
        daemons.stop_all()
        shutil.rmtree(data_dir, ignore_errors=True)


def shot(page: Any, name: str, full_page: bool = True) -> Path:
    """Save a screenshot of the current screen as a test artifact."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def login_with_keys(page: Any, console: Console, access_key: str | None = None,
                    secret_key: str | None = None) -> None:
    page.goto(console.url + "/")
    page.get_by_label("Access key").fill(access_key or console.access_key)
    page.get_by_label("Secret key").fill(secret_key or console.secret_key)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("heading", name="Model Serving").wait_for()


@pytest.fixture
def same_origin_only(page: Any, console: Console) -> Iterator[list[str]]:
    """Every request the page makes; the test fails if one goes to another origin."""
    seen: list[str] = []
    page.on("request", lambda request: seen.append(request.url))
    yield seen
    foreign = [u for u in seen if not (u.startswith(console.url + "/") or u.startswith("data:"))]
    assert not foreign, f"requests to other origins: {foreign}"


UNNAMED_CONTROLS_JS = """() => {
  const name = (el) => (el.getAttribute('aria-label') || '').trim()
    || (el.labels && [...el.labels].map((l) => l.textContent).join(' ').trim())
    || (el.getAttribute('aria-labelledby') || '').split(' ').map((id) => document.getElementById(id))
         .filter(Boolean).map((n) => n.textContent).join(' ').trim()
    || (el.tagName === 'INPUT' ? '' : el.textContent.trim()) || (el.getAttribute('title') || '').trim();
  return [...document.querySelectorAll('a[href], button, input, select, textarea, [role=dialog]')]
    .filter((el) => el.type !== 'hidden' && !name(el)).map((el) => el.outerHTML.slice(0, 120));
}"""


def assert_every_control_named(page: Any) -> None:
    """Every link, button, field and dialog on the screen has an accessible name (label, aria-label or text)."""
    unnamed = page.evaluate(UNNAMED_CONTROLS_JS)
    assert not unnamed, unnamed


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"
