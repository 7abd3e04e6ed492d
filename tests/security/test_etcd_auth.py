"""etcd with authentication: every etcd client (manager, agent, app proxy) logs in as a user whose role may only
read and write Moorage's prefix (``/moorage/``), and a wrong password stops each of them at start with one clear
line (docs/security.md, "etcd").

Real etcd with ``auth enable``, real PostgreSQL, the real daemons as processes.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.store import AGENTS_PREFIX, ROUTES_PREFIX, EtcdStore
from manager.control.leader import LEADER_KEY
from tests.e2e.harness import REPO, chat, cluster_processes, moorage, moorage_json, wait_for
from tests.services import EtcdServer, free_port, wait_port

ROOT_PASSWORD = "root-" + secrets.token_hex(8)
PREFIX = "/moorage/"  # every key Moorage writes (routes, agents, proxies, demand, manager/leader, manager/wake)


def _auth_etcd(*extra: str) -> Iterator[EtcdServer]:
    server = EtcdServer(list(extra))
    server.start()
    try:
        server.password = "moorage-" + secrets.token_hex(12)
        server.enable_auth(ROOT_PASSWORD, {"moorage": (server.password, PREFIX)})
        yield server
    finally:
        server.close()


@pytest.fixture
def auth_etcd() -> Iterator[EtcdServer]:
    yield from _auth_etcd()


def _secret_file(path: Path, content: str) -> Path:
    path.write_text(content + "\n")
    path.chmod(0o600)
    return path


def _read_as_root(etcd: EtcdServer, key: str, prefix: bool = False) -> object:
    async def read() -> object:
        store = EtcdStore("127.0.0.1", etcd.client_port, user="root", password=ROOT_PASSWORD)
        try:
            return await (store.get_prefix(key) if prefix else store.get(key))
        finally:
            await store.close()

    return asyncio.run(read())


def test_etcd_refuses_anonymous_clients(auth_etcd: EtcdServer) -> None:
    """The fixture itself: without a user, etcd answers nothing (so the tests below prove the login is used)."""
    async def anonymous() -> None:
        store = EtcdStore("127.0.0.1", auth_etcd.client_port)
        try:
            await store.get(LEADER_KEY)
        finally:
            await store.close()

    with pytest.raises(Exception, match="user name is empty|authentication"):
        asyncio.run(anonymous())


@pytest.mark.e2e
def test_cluster_on_etcd_with_authentication(tmp_path: Path, pg_url: str, auth_etcd: EtcdServer) -> None:
    password: str = auth_etcd.password
    pw_file = _secret_file(tmp_path / "etcd_password", password)
    etcd_env = {f"MOORAGE_{who}__ETCD__{key}": value for who in ("MANAGER", "APPPROXY")
                for key, value in (("NAMESPACE", ""), ("USER", "moorage"), ("PASSWORD_FILE", str(pw_file)))}
    with cluster_processes(tmp_path, pg_url, auth_etcd, heartbeat_timeout=10.0, manager_env=etcd_env) as cluster:
        logs = cluster.daemons.logs
        # The manager elects itself leader.
        claim = wait_for(lambda: _read_as_root(auth_etcd, LEADER_KEY), 30, "the manager to lead", on_timeout=logs)
        assert json.loads(claim)["url"] == cluster.manager_url
        # An agent registers under its lease.
        cluster.agent_env("auth-agent", MOORAGE_AGENT__ETCD__HOST="127.0.0.1",
                          MOORAGE_AGENT__ETCD__PORT=str(auth_etcd.client_port), MOORAGE_AGENT__ETCD__USER="moorage",
                          MOORAGE_AGENT__ETCD__PASSWORD_FILE=str(pw_file))
        cluster.start_agent("auth-agent")
        wait_port("127.0.0.1", cluster.agents["auth-agent"]["port"], 30)
        wait_for(lambda: _read_as_root(auth_etcd, AGENTS_PREFIX + "auth-agent"), 20, "the agent's registration",
                 on_timeout=logs)

        # The manager publishes a route table; the app proxy, watching it, serves the endpoint.
        env = cluster.cli_env
        moorage(env, "folder", "create", "echo")
        moorage(env, "folder", "upload", "echo", str(REPO / "configs/models/echo"))
        moorage(env, "service", "create", "echo", "1", "--name", "auth-svc", "-r", "cpu=0.25", "-r", "mem=64m")
        svc = wait_for(lambda: (i := moorage_json(env, "service", "info", "auth-svc")) and i["status"] == "HEALTHY"
                       and i, 90, "a healthy replica", on_timeout=logs)
        table = wait_for(lambda: (raw := _read_as_root(auth_etcd, ROUTES_PREFIX + svc["endpoint_id"]))
                         and json.loads(raw)["routes"] and raw, 20, "the route table", on_timeout=logs)
        assert len(json.loads(table)["routes"]) == 1
        token = moorage(env, "service", "token", "auth-svc", "--duration", "1h").stdout.strip()
        status, body = wait_for(lambda: (r := chat(svc["service_endpoint"], token)) and r[0] == 200 and r, 20,
                                "the proxy serving", on_timeout=logs)
        assert b"echo: hello" in body

        cluster.daemons.stop_all()
        everything = "".join(p.read_text(errors="replace") for p in tmp_path.glob("*.log"))
        assert password not in everything, "the etcd password was logged"


def _component_env(which: str, tmp_path: Path, etcd: EtcdServer, pw_file: Path | None) -> tuple[list[str], dict]:
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
    secret = _secret_file(tmp_path / f"{which}-secret", secrets.token_urlsafe(32))
    if which == "manager":
        prefix = "MOORAGE_MANAGER"
        env = {f"{prefix}__ETCD__PORT": str(etcd.client_port),
               f"{prefix}__DB__URL": "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres",
               f"{prefix}__MANAGER__LISTEN_PORT": str(free_port()),
               f"{prefix}__MANAGER__STORAGE_ROOT": str(tmp_path / "storage"),
               f"{prefix}__SECRETS__CLUSTER_SECRET_FILE": str(secret),
               f"{prefix}__SECRETS__JWT_SECRET_FILE": str(secret),
               f"{prefix}__SECRETS__KEYPAIR_ENCRYPTION_KEY_FILE": str(secret)}
    elif which == "agent":
        prefix = "MOORAGE_AGENT"
        env = {f"{prefix}__ETCD__HOST": "127.0.0.1", f"{prefix}__ETCD__PORT": str(etcd.client_port),
               f"{prefix}__AGENT__LISTEN_PORT": str(free_port()),
               f"{prefix}__AGENT__STATE_DIR": str(tmp_path / "agent-state"),
               f"{prefix}__AGENT__STORAGE_ROOT": str(tmp_path / "storage"),
               f"{prefix}__SECRETS__CLUSTER_SECRET_FILE": str(secret)}
    else:
        prefix = "MOORAGE_APPPROXY"
        env = {f"{prefix}__ETCD__PORT": str(etcd.client_port), f"{prefix}__SECRETS__JWT_SECRET_FILE": str(secret)}
    if pw_file is not None:
        env[f"{prefix}__ETCD__USER"] = "moorage"
        env[f"{prefix}__ETCD__PASSWORD_FILE"] = str(pw_file)
    cmd = [sys.executable, "-m", "manager.cli.main", which, "--config", str(REPO / f"configs/{which}.toml")]
    return cmd, {**base, **env}


@pytest.mark.parametrize("which", ["manager", "agent", "appproxy"])
@pytest.mark.parametrize("case", ["wrong password", "no user"])
def test_bad_credentials_stop_each_component_at_start(tmp_path: Path, auth_etcd: EtcdServer, which: str,
                                                      case: str) -> None:
    wrong = "wrong-" + secrets.token_hex(8)
    pw_file = _secret_file(tmp_path / "etcd_password", wrong) if case == "wrong password" else None
    cmd, env = _component_env(which, tmp_path, auth_etcd, pw_file)
    try:
        result = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{which} hung with {case}: {exc.stdout!r} {exc.stderr!r}") from None
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    assert wrong not in output
    last = output.strip().splitlines()[-1]
    if case == "wrong password":
        assert "etcd" in last and "user 'moorage'" in last and "password" in last, output
    else:
        assert "etcd" in last and "requires authentication" in last, output


def test_world_readable_password_file_is_refused(tmp_path: Path, auth_etcd: EtcdServer) -> None:
    pw_file = _secret_file(tmp_path / "etcd_password", auth_etcd.password)
    pw_file.chmod(0o644)
    cmd, env = _component_env("appproxy", tmp_path, auth_etcd, pw_file)
    result = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "etcd.password" in result.stderr and "chmod 600" in result.stderr, result.stderr


def test_expired_auth_token_is_renewed(tmp_path: Path) -> None:
    """etcd forgets an idle client's auth token after ``--auth-token-ttl`` (and on restart): the store logs in
    again instead of failing every call from then on."""
    async def run(etcd: EtcdServer) -> str | None:
        store = EtcdStore("127.0.0.1", etcd.client_port, user="moorage", password=etcd.password)
        try:
            await store.put(PREFIX + "probe", "1")
            await asyncio.sleep(3)
            await store.put(PREFIX + "probe", "2")
            return await store.get(PREFIX + "probe")
        finally:
            await store.close()

    for etcd in _auth_etcd("--auth-token-ttl", "1"):
        assert asyncio.run(run(etcd)) == "2"


def test_one_etcd_section_for_all_three_and_the_password_stays_hidden(tmp_path: Path) -> None:
    from agent.config import AgentConfig
    from appproxy.config import ProxyConfig
    from common.config import ConfigError, load_config
    from manager.config import ManagerConfig

    def load(model, etcd: dict):
        return load_config(model, None, "MOORAGE_TEST", {"etcd": etcd}, environ={})

    pw_file = _secret_file(tmp_path / "etcd_password", "from-the-file")
    section = {"host": "10.0.0.2", "port": 2380, "namespace": "/prod", "user": "moorage",
               "password_file": str(pw_file)}
    for model in (ManagerConfig, AgentConfig, ProxyConfig):
        config = load(model, section)
        assert config.etcd.credentials() == ("moorage", "from-the-file")
        assert "from-the-file" not in repr(EtcdStore.from_config(config.etcd))
    inline = load(ManagerConfig, {"user": "moorage", "password": "inline-secret"})
    assert "inline-secret" not in repr(inline) and "inline-secret" not in str(inline)
    assert inline.etcd.credentials() == ("moorage", "inline-secret")
    with pytest.raises(ConfigError, match="user is not"):
        load(ProxyConfig, {"password": "orphan"})
    with pytest.raises(ConfigError, match="etcd.password must be set"):
        load(ManagerConfig, {"user": "moorage"}).etcd.credentials()
    with pytest.raises(ConfigError, match="pasword_file"):  # a misspelt key fails loudly in all three
        load(ManagerConfig, {"user": "moorage", "pasword_file": str(pw_file)})
