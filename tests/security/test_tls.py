"""TLS on the listeners (docs/security.md, "TLS"), on real sockets with a throwaway CA.

Before: no listener could serve TLS (``tls_cert_file`` was an unknown key: refused by the proxy's and agent's
configs, ignored by the manager's), and every URL the components published was ``http://``.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path

import aiohttp
import pytest
import sqlalchemy as sa

from agent.config import load_agent_config
from appproxy.config import ProxyConfig, load_proxy_config
from common.config import ConfigError
from common.signing import SignedClient
from common.status import UserRole
from common.store import MemoryStore
from manager.bootstrap import create_user
from manager.config import ManagerConfig, load_manager_config
from manager.context import CTX
from manager.server import build_manager_app, start_manager_site
from tests.appproxy import conftest as appproxy_fixtures
from tests.appproxy.appproxy_testkit import SECRET as JWT_SECRET
from tests.appproxy.appproxy_testkit import auth, eventually, free_port, make_table, publish
from tests.manager.apiclient import APIClient
from tests.security.tls_ca import TestCA

store, upstreams, make_proxy, http = (appproxy_fixtures.store, appproxy_fixtures.upstreams,
                                      appproxy_fixtures.make_proxy, appproxy_fixtures.http)

CLUSTER_SECRET = "c" * 32


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "pki")


def trusting(ca: TestCA) -> aiohttp.ClientSession:
    """A client that verifies certificates against the test CA only."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=ca.ca_file)),
                                 timeout=aiohttp.ClientTimeout(total=20))


def manager_config(tmp_path: Path, port: int, **manager: object) -> ManagerConfig:
    return ManagerConfig.model_validate({
        "manager": {"listen_host": "127.0.0.1", "listen_port": port, "storage_root": str(tmp_path / "storage"),
                    "auto_migrate": True, **manager},
        "db": {"url": f"sqlite+aiosqlite:///{tmp_path}/m.db"},
        "secrets": {"cluster_secret": CLUSTER_SECRET, "jwt_secret": "j" * 32, "keypair_encryption_key": "k" * 32},
        "appproxy": {"port_range": [20000, 20009]},
        "reconcile": {"interval": 5},
    })


async def plain_http_fails(url: str) -> None:
    """A plain-HTTP request to a TLS port gets no HTTP answer (the TLS handshake fails, the connection closes)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as plain:
        with pytest.raises(aiohttp.ClientError):
            async with plain.get(url) as resp:
                await resp.read()


# -- manager ------------------------------------------------------------------------------------------------------

async def test_manager_serves_https_and_a_signed_request_verifies(tmp_path: Path, ca: TestCA) -> None:
    port = free_port()
    cert = ca.issue("manager")
    config = manager_config(tmp_path, port, tls_cert_file=cert.cert_file, tls_key_file=cert.key_file)
    assert config.public_url == f"https://127.0.0.1:{port}"
    app = build_manager_app(config, MemoryStore(), run_loops=False)
    runner = await start_manager_site(app, config)
    try:
        _, access, secret = await create_user(app[CTX].db, "alice@example.com", UserRole.USER,
                                              box=app[CTX].keypair_box)
        async with trusting(ca) as session:
            client = APIClient(session, config.public_url, access, secret)
            status, body = await client.request("GET", "/services")
            assert status == 200, body
        _, writer = await asyncio.open_connection("127.0.0.1", port, server_hostname="localhost",
                                                  ssl=ssl.create_default_context(cafile=ca.ca_file))
        assert writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
        writer.close()
        # the system trust store does not know the private CA: verification is on
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as system:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await system.get(config.public_url + "/")
        await plain_http_fails(f"http://127.0.0.1:{port}/")
        server_ctx = config.server_ssl_context()
        assert server_ctx is not None and server_ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    finally:
        await runner.cleanup()


async def test_agent_and_manager_talk_https_both_ways_with_a_private_ca(tmp_path: Path, ca: TestCA) -> None:
    """Heartbeats agent → manager (agent tls_ca_file) and RPC manager → agent (manager tls_ca_file), each
    listener on HTTPS."""
    from agent.server import build_agent_app
    from manager.db.models import Agent
    from tests.agent.conftest import make_config

    mport, aport = free_port(), free_port()
    mcert, acert = ca.issue("manager"), ca.issue("agent")
    config = manager_config(tmp_path, mport, tls_cert_file=mcert.cert_file, tls_key_file=mcert.key_file,
                            tls_ca_file=ca.ca_file)
    app = build_manager_app(config, MemoryStore(), run_loops=False)
    runner = await start_manager_site(app, config)
    acfg = make_config(tmp_path / "agent", {
        "agent": {"listen_port": aport, "manager_url": config.public_url, "tls_ca_file": ca.ca_file,
                  "tls_cert_file": acert.cert_file, "tls_key_file": acert.key_file, "heartbeat_interval": 0.2},
        "secrets": {"cluster_secret": CLUSTER_SECRET}, "local": {"sandbox": "none", "network": "host"}})
    assert acfg.agent.rpc_url == f"https://127.0.0.1:{aport}"
    from aiohttp import web

    agent_runner = web.AppRunner(build_agent_app(acfg))
    await agent_runner.setup()
    try:
        await web.TCPSite(agent_runner, "127.0.0.1", aport, ssl_context=acfg.server_ssl_context()).start()

        async def registered() -> bool:
            async with app[CTX].db() as db:
                row = (await db.execute(sa.select(Agent).where(Agent.id == acfg.agent.id))).scalar_one_or_none()
                return row is not None and row.rpc_url == acfg.agent.rpc_url

        await eventually(registered, timeout=15, what="a heartbeat over HTTPS")
        health = await app[CTX].agents.call("GET", acfg.agent.rpc_url, "/rpc/health")
        assert health, health
        await plain_http_fails(f"http://127.0.0.1:{aport}/rpc/health")
    finally:
        await agent_runner.cleanup()
        await runner.cleanup()


# -- app proxy ----------------------------------------------------------------------------------------------------

async def test_proxy_endpoint_answers_https_with_a_token_and_the_fast_path(make_proxy, store, upstreams,
                                                                          ca: TestCA) -> None:
    up = await upstreams("a")
    cert = ca.issue("proxy")
    proxy = await make_proxy(proxy={"tls_cert_file": cert.cert_file, "tls_key_file": cert.key_file})
    table = make_table(port=free_port(), routes=[up.target()])
    await publish(store, table)
    await eventually(lambda: proxy.frontend.ports.get(table.port) == table.endpoint_id, what="endpoint port")
    url = f"https://localhost:{table.port}"
    async with trusting(ca) as session:
        for _ in range(5):  # the first warms the pool, the others take the fast path, all over TLS
            async with session.post(url + "/echo", json={"x": 1}, headers=auth(table.endpoint_id)) as resp:
                assert resp.status == 200, await resp.text()
                echoed = await resp.json()
        assert echoed["headers"]["X-Forwarded-Proto"] == ["https"], echoed
        async with session.get(url + "/echo") as resp:  # no token: still refused
            assert resp.status == 401
    assert proxy.fastpath.taken >= 3, proxy.fastpath.taken
    await plain_http_fails(f"http://127.0.0.1:{table.port}/echo")


async def test_proxy_wildcard_and_admin_listeners_serve_https(make_proxy, store, upstreams, ca: TestCA) -> None:
    up = await upstreams("a")
    cert = ca.issue("proxy", ["*.apps.test", "localhost", "127.0.0.1"])
    wildcard_port = free_port()
    proxy = await make_proxy(proxy={"tls_cert_file": cert.cert_file, "tls_key_file": cert.key_file,
                                    "frontend": "wildcard", "wildcard_domain": ".apps.test",
                                    "wildcard_port": wildcard_port, "admin_port": 0},
                             secrets={"cluster_secret": CLUSTER_SECRET})
    table = make_table(port=None, routes=[up.target()], subdomain="chat")
    await publish(store, table)
    await eventually(lambda: proxy.routes.get(table.endpoint_id) is not None, what="route table")
    async with trusting(ca) as session:
        async with session.get(f"https://127.0.0.1:{wildcard_port}/echo", server_hostname="chat.apps.test",
                               headers={"Host": "chat.apps.test", **auth(table.endpoint_id)}) as resp:
            assert resp.status == 200, await resp.text()
        # the admin listener, at the https:// URL the proxy registers for the manager
        assert proxy.registration is not None
        admin = proxy.registration.info.admin_url
        assert admin.startswith("https://"), admin
        signed = SignedClient(session, CLUSTER_SECRET)
        report = await signed.call("GET", admin.replace("://127.0.0.1:", "://localhost:"),
                                   f"/endpoints/{table.endpoint_id}/metrics")
        assert isinstance(report, dict), report
    await plain_http_fails(f"http://127.0.0.1:{wildcard_port}/echo")


async def test_manager_builds_https_endpoint_urls_when_told(tmp_path: Path) -> None:
    from manager.addresses import endpoint_url

    config = manager_config(tmp_path, 8090)
    config.appproxy.scheme = "https"
    assert endpoint_url(config, 10300) == "https://127.0.0.1:10300"


# -- configuration errors -----------------------------------------------------------------------------------------

def test_a_cert_without_its_key_is_a_clear_config_error(tmp_path: Path, ca: TestCA) -> None:
    cert = ca.issue("x")
    toml = tmp_path / "manager.toml"
    toml.write_text(f'[manager]\ntls_cert_file = "{cert.cert_file}"\n')
    with pytest.raises(ConfigError, match="tls_key_file is missing"):
        load_manager_config(toml)
    with pytest.raises(ConfigError, match="tls_cert_file is missing"):
        load_manager_config(None, {"manager": {"tls_key_file": cert.key_file}})
    toml.write_text(f'[proxy]\ntls_cert_file = "{cert.cert_file}"\n')
    with pytest.raises(ConfigError, match="tls_key_file is missing"):
        load_proxy_config(toml)
    with pytest.raises(ConfigError, match="tls_key_file is missing"):
        load_agent_config(None, {"agent": {"tls_cert_file": cert.cert_file}}, environ={})


def test_unreadable_exposed_or_mismatched_files_stop_the_start(tmp_path: Path, ca: TestCA) -> None:
    one, two = ca.issue("one"), ca.issue("two")

    def proxy(cert: str, key: str) -> ProxyConfig:
        return ProxyConfig.model_validate({"proxy": {"tls_cert_file": cert, "tls_key_file": key},
                                           "secrets": {"jwt_secret": JWT_SECRET}})

    assert proxy(one.cert_file, one.key_file).server_ssl_context() is not None
    with pytest.raises(ConfigError, match="cannot read"):
        proxy(str(tmp_path / "missing.crt"), one.key_file).server_ssl_context()
    with pytest.raises(ConfigError, match="key must belong to the certificate"):
        proxy(one.cert_file, two.key_file).server_ssl_context()
    os.chmod(one.key_file, 0o644)  # a private key others can read is refused like any secret file
    with pytest.raises(ConfigError, match="chmod 600"):
        proxy(one.cert_file, one.key_file).server_ssl_context()
    os.chmod(one.key_file, 0o600)
    encrypted = Path(tmp_path / "enc.key")
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(Path(one.key_file).read_bytes(), None)
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"secret")))
    encrypted.chmod(0o600)
    with pytest.raises(ConfigError, match="encrypted private keys"):
        proxy(one.cert_file, str(encrypted)).server_ssl_context()
    config = manager_config(tmp_path, 1, tls_ca_file=str(tmp_path / "nope.pem"))
    with pytest.raises(ConfigError, match="manager.tls_ca_file"):
        config.client_ssl()
    with pytest.raises(ConfigError, match="manager.tls_ca_file"):
        build_manager_app(config, MemoryStore())


def test_plain_configs_keep_plain_http(tmp_path: Path) -> None:
    config = manager_config(tmp_path, 8090)
    assert config.server_ssl_context() is None and config.client_ssl() is True
    assert config.public_url == "http://127.0.0.1:8090"
    acfg = load_agent_config(None, {"agent": {"listen_port": 6001}}, environ={})
    assert acfg.agent.rpc_url == "http://127.0.0.1:6001" and acfg.server_ssl_context() is None


# -- the daemons as processes -------------------------------------------------------------------------------------

@pytest.mark.e2e
def test_cluster_processes_serve_an_endpoint_over_https(tmp_path: Path, pg_url: str, etcd_server) -> None:
    """``moorage manager``, ``agent`` and ``appproxy`` as processes, every listener on HTTPS from one private CA:
    heartbeats and RPC cross TLS both ways, the CLI reaches the manager through ``SSL_CERT_FILE``, and the endpoint
    URL the manager hands out is an ``https://`` URL that answers with a token."""
    import json
    import urllib.request

    from tests.e2e.harness import REPO, cluster_processes, moorage, moorage_json, wait_for
    from tests.services import wait_port

    ca = TestCA(tmp_path / "pki")
    mcert, acert, pcert = ca.issue("manager"), ca.issue("agent"), ca.issue("proxy")
    tls_env = {
        "MOORAGE_MANAGER__MANAGER__TLS_CERT_FILE": mcert.cert_file,
        "MOORAGE_MANAGER__MANAGER__TLS_KEY_FILE": mcert.key_file,
        "MOORAGE_MANAGER__MANAGER__TLS_CA_FILE": ca.ca_file,
        "MOORAGE_MANAGER__APPPROXY__SCHEME": "https",
        "MOORAGE_APPPROXY__PROXY__TLS_CERT_FILE": pcert.cert_file,
        "MOORAGE_APPPROXY__PROXY__TLS_KEY_FILE": pcert.key_file,
    }
    with cluster_processes(tmp_path, pg_url, etcd_server, heartbeat_timeout=10.0, manager_env=tls_env) as cluster:
        manager_url = cluster.manager_url.replace("http://", "https://")
        env = {**cluster.cli_env, "MOORAGE_ENDPOINT": manager_url, "SSL_CERT_FILE": ca.ca_file}
        cluster.agent_env("tls-agent", MOORAGE_AGENT__AGENT__MANAGER_URL=manager_url,
                          MOORAGE_AGENT__AGENT__TLS_CA_FILE=ca.ca_file,
                          MOORAGE_AGENT__AGENT__TLS_CERT_FILE=acert.cert_file,
                          MOORAGE_AGENT__AGENT__TLS_KEY_FILE=acert.key_file,
                          MOORAGE_AGENT__AGENT__HEARTBEAT_INTERVAL="1")
        cluster.start_agent("tls-agent")
        wait_port("127.0.0.1", cluster.agents["tls-agent"]["port"], 30)
        logs = cluster.daemons.logs
        wait_for(lambda: any(a["id"] == "tls-agent" and a["status"] == "alive"
                             for a in moorage_json(env, "agents", "--json")), 60, "the agent alive", on_timeout=logs)
        moorage(env, "folder", "create", "echo")
        moorage(env, "folder", "upload", "echo", str(REPO / "configs/models/echo"))
        moorage(env, "service", "create", "echo", "1", "--name", "echo-tls", "-r", "cpu=0.25", "-r", "mem=64m")
        info = wait_for(lambda: (i := moorage_json(env, "service", "info", "echo-tls"))["status"] == "HEALTHY" and i,
                        90, "a healthy replica (started over HTTPS RPC)", on_timeout=logs)
        url = info["service_endpoint"]
        assert url.startswith("https://127.0.0.1:"), url
        token = moorage(env, "service", "token", "echo-tls", "--duration", "1h").stdout.strip()
        body = json.dumps({"model": "echo", "messages": [{"role": "user", "content": "hello"}]}).encode()
        context = ssl.create_default_context(cafile=ca.ca_file)

        def chat() -> bytes | None:
            request = urllib.request.Request(url + "/v1/chat/completions", data=body, method="POST",
                                             headers={"Authorization": f"Bearer {token}",
                                                      "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, context=context, timeout=10) as resp:
                    return resp.read() if resp.status == 200 else None
            except OSError:
                return None

        answer = wait_for(chat, 30, "the endpoint answering over HTTPS", on_timeout=logs)
        assert b"echo: hello" in answer
    manager_log = (tmp_path / "manager.log").read_text(errors="replace")
    assert "listening on https://" in manager_log and "plain HTTP" not in manager_log, manager_log[-2000:]
