"""``moorage config show``: the effective config of each component, secrets never printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-" + "x" * 40


def _show(component: str, config: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
    return subprocess.run([sys.executable, "-m", "manager.cli.main", "config", "show", component, "--config",
                           str(config)], capture_output=True, text=True, env={**clean, **env}, cwd=REPO, timeout=60)


@pytest.mark.parametrize("component,env", [
    ("manager", {"MOORAGE_MANAGER__SECRETS__JWT_SECRET": SECRET, "MOORAGE_MANAGER__ETCD__USER": "moorage",
                 "MOORAGE_MANAGER__ETCD__PASSWORD": SECRET}),
    ("agent", {"MOORAGE_AGENT__SECRETS__CLUSTER_SECRET": SECRET}),
    ("appproxy", {"MOORAGE_APPPROXY__SECRETS__JWT_SECRET": SECRET}),
])
def test_show_masks_every_secret(component: str, env: dict[str, str]) -> None:
    out = _show(component, REPO / "configs" / f"{component}.toml", **env)
    assert out.returncode == 0, out.stderr
    assert SECRET not in out.stdout and SECRET not in out.stderr
    shown = json.loads(out.stdout)
    assert "***" in out.stdout or "*****" in out.stdout
    assert "secrets" in shown or "etcd" in shown


def test_show_reports_an_unknown_key_with_the_closest_name(tmp_path: Path) -> None:
    config = tmp_path / "manager.toml"
    config.write_text("[reconcile]\nintervall = 1\n")
    out = _show("manager", config)
    assert out.returncode == 1 and "did you mean 'reconcile.interval'?" in out.stderr, out.stderr


def test_show_masks_the_database_password_in_the_url_and_apart(tmp_path: Path) -> None:
    config = tmp_path / "manager.toml"
    config.write_text(f'[db]\nurl = "postgresql+asyncpg://moorage:{SECRET}@db.example:5432/moorage"\n')
    out = _show("manager", config, MOORAGE_MANAGER__DB__PASSWORD=SECRET + "-apart")
    assert out.returncode == 0, out.stderr
    assert SECRET not in out.stdout and SECRET not in out.stderr
    shown = json.loads(out.stdout)["db"]
    assert shown["url"] == "postgresql+asyncpg://moorage:***@db.example:5432/moorage"
    assert shown["password"] == "***"


def test_masked_keeps_urls_without_a_password() -> None:
    from manager.cli.config_show import masked

    assert masked({"url": "postgresql+asyncpg://postgres@127.0.0.1:5432/moorage"}) == {
        "url": "postgresql+asyncpg://postgres@127.0.0.1:5432/moorage"}
    assert masked({"url": "sqlite+aiosqlite:////var/lib/moorage/db.sqlite"})["url"].endswith("db.sqlite")
    assert masked({"x": "https://u:p@h/"}) == {"x": "https://u:***@h/"}
