"""Configuration loading and the standalone process (``python -m appproxy``)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from appproxy.config import ProxyConfig, load_proxy_config
from common.config import ConfigError
from tests.appproxy.appproxy_testkit import SECRET, free_port

REPO = Path(__file__).resolve().parents[2]


def test_defaults_and_env_overrides(monkeypatch):
    monkeypatch.setenv("MOORAGE_APPPROXY__PROXY__MAX_BODY_SIZE", "1024")
    monkeypatch.setenv("MOORAGE_APPPROXY__OUTLIER__CONSECUTIVE_FAILURES", "5")
    monkeypatch.setenv("MOORAGE_APPPROXY__SECRETS__JWT_SECRET", SECRET)
    config = load_proxy_config(None)
    assert config.proxy.bind_host == "127.0.0.1"
    assert config.proxy.max_header_size == 16 * 1024
    assert config.proxy.upstream_read_timeout == 300
    assert config.proxy.max_body_size == 1024
    assert config.outlier.consecutive_failures == 5
    assert config.jwt_secret() == SECRET
    assert SECRET not in repr(config)  # printing the config does not leak the secret


def test_toml_file_and_secret_file(tmp_path):
    secret_file = tmp_path / "jwt"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o600)  # secret files others can read are refused
    path = tmp_path / "appproxy.toml"
    path.write_text(f'[proxy]\nbind_host = "0.0.0.0"\n[etcd]\nport = 12379\n'
                    f'[secrets]\njwt_secret_file = "{secret_file}"\n')
    config = load_proxy_config(path)
    assert config.proxy.bind_host == "0.0.0.0" and config.etcd.port == 12379
    assert config.jwt_secret() == SECRET


def test_bad_configs_are_refused(tmp_path):
    path = tmp_path / "appproxy.toml"
    path.write_text("[proxy]\nmax_body_sise = 10\n")  # typo
    with pytest.raises(ConfigError, match="max_body_sise"):
        load_proxy_config(path)
    with pytest.raises(ConfigError, match="jwt_secret"):
        ProxyConfig().jwt_secret()
    with pytest.raises(ConfigError, match="cannot read"):
        ProxyConfig.model_validate({"secrets": {"jwt_secret_file": str(tmp_path / "missing")}}).jwt_secret()


async def _wait_for_line(stream: asyncio.StreamReader, needle: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = await asyncio.wait_for(stream.readline(), max(0.1, deadline - time.monotonic()))
        if not line:
            break
        seen.append(line.decode())
        if needle in seen[-1]:
            return seen[-1]
    raise AssertionError(f"{needle!r} not seen; output:\n{''.join(seen)}")


async def test_standalone_process_stops_cleanly_on_sigterm(tmp_path):
    path = tmp_path / "appproxy.toml"
    # etcd is not running: the proxy must start anyway (serving nothing) and stop cleanly
    path.write_text(f"[proxy]\ninitial_sync_timeout = 0.3\n[etcd]\nport = {free_port()}\n")
    env = {**os.environ, "MOORAGE_APPPROXY__SECRETS__JWT_SECRET": SECRET, "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "appproxy", "--config", str(path), "--log-level", "info", cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        await _wait_for_line(proc.stdout, "app proxy ready", 30)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_standalone_process_reports_config_errors(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_APPPROXY")}
    env["PYTHONPATH"] = str(REPO)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "appproxy", cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert b"jwt_secret" in out
