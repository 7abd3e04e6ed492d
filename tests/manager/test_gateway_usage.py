"""Gateway usage end to end: an in-process manager (SQLite), a key made through its API, an app proxy whose
gateway reports to the manager's signed /internal/usage, a real echo replica. Usage is recorded exactly as the
replica reported it (streamed answers too), a resent batch is not counted twice, GET /usage and ``moorage usage``
group it, users see only their own; a real proxy process stopped with SIGTERM delivers every record."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import sqlalchemy as sa

from appproxy.config import ProxyConfig
from appproxy.server import AppProxy
from common.apikeys import APIKEYS_PREFIX
from common.protocol import RouteTable
from common.signing import RPCError, SignedClient
from common.status import UserRole
from common.store import ROUTES_PREFIX, EtcdStore, MemoryStore
from common.usage import UsageRecord
from manager.bootstrap import create_user
from manager.cli.main import main
from manager.context import CTX
from manager.db.models import UsageRecordRow
from manager.server import build_manager_app
from tests.appproxy.appproxy_testkit import eventually, port_accepts
from tests.appproxy.test_gateway import Echo
from tests.manager.apiclient import APIClient
from tests.manager.inprocess import manager_config, serving
from tests.services import free_port

REPO = Path(__file__).resolve().parents[2]
CLUSTER = "c" * 32  # = tests.manager.inprocess
JWT = "j" * 32


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    port = free_port()
    store = MemoryStore()
    echo = Echo()
    async with serving(build_manager_app(manager_config(tmp_path, port), store), port) as app:
        db, box = app[CTX].db, app[CTX].keypair_box
        alice_id, ak1, sk1 = await create_user(db, "alice@example.com", UserRole.USER, box=box)
        bob_id, ak2, sk2 = await create_user(db, "bob@example.com", UserRole.USER, box=box)
        _, ak3, sk3 = await create_user(db, "root@example.com", UserRole.SUPERADMIN, box=box)
        async with aiohttp.ClientSession() as session:
            await echo.ready(session)
            url = f"http://127.0.0.1:{port}"
            yield {"url": url, "app": app, "store": store, "echo": echo, "session": session, "alice_id": alice_id,
                   "alice": APIClient(session, url, ak1, sk1), "bob": APIClient(session, url, ak2, sk2),
                   "root": APIClient(session, url, ak3, sk3), "alice_keys": (ak1, sk1), "bob_id": bob_id}
    echo.proc.kill()
    echo.proc.wait(10)


async def start_proxy(env: dict[str, Any], **gateway: Any) -> AppProxy:
    config = ProxyConfig.model_validate({
        "proxy": {"initial_sync_timeout": 2.0, "shutdown_timeout": 1.0},
        "secrets": {"jwt_secret": JWT, "cluster_secret": CLUSTER},
        "gateway": {"port": 0, "manager_url": env["url"], **gateway}})
    proxy = AppProxy(config, env["store"])
    await proxy.start()
    return proxy


async def echo_table(env: dict[str, Any], owner: uuid.UUID, store: Any = None) -> RouteTable:
    table = RouteTable(endpoint_id=uuid.uuid4(), name="echo", owner_id=owner, routes=[env["echo"].target()])
    await (store or env["store"]).put(ROUTES_PREFIX + str(table.endpoint_id), table.model_dump_json())
    return table


async def rows(env: dict[str, Any]) -> list[UsageRecordRow]:
    async with env["app"][CTX].db() as db:
        return list((await db.execute(sa.select(UsageRecordRow).order_by(UsageRecordRow.at))).scalars())


async def test_usage_is_recorded_as_the_replica_reported_it(env: dict[str, Any]) -> None:
    status, created = await env["alice"].request("POST", "/api-keys", {"name": "ci", "tpm": 100_000})
    assert status == 201
    table = await echo_table(env, env["alice_id"])
    proxy = await start_proxy(env, usage_flush_interval=0.2)
    assert proxy.gateway is not None
    try:
        await eventually(lambda: proxy.routes.get(table.endpoint_id) is not None, what="table served")
        async with openai.AsyncOpenAI(base_url=proxy.gateway.url, api_key=created["key"], max_retries=0) as oa:
            reply = await oa.chat.completions.create(model="echo", messages=[{"role": "user", "content": "a b c"}])
            assert reply.usage is not None and (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (3, 4)
            chunks = [c async for c in await oa.chat.completions.create(
                model="echo", messages=[{"role": "user", "content": "one two"}], stream=True)]
            assert all(c.usage is None for c in chunks)  # the usage chunk the gateway asked for is stripped
            with pytest.raises(openai.NotFoundError):
                await oa.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
        await eventually(lambda: _count(env, 2), what="two usage records")
    finally:
        await proxy.stop()
    recorded = await rows(env)
    assert [(r.prompt_tokens, r.completion_tokens, r.estimated, r.status) for r in recorded] == [
        (3, 4, False, 200), (2, 3, False, 200)]  # the 404 reached no replica: no record
    first = recorded[0]
    assert first.key_id == uuid.UUID(created["id"]) and first.user_id == env["alice_id"] and first.model == "echo"
    assert first.endpoint_id == table.endpoint_id and first.route_id == table.routes[0].route_id
    assert first.duration_ms > 0 and first.ttft_ms is not None and first.ttft_ms <= first.duration_ms
    # GET /usage: alice sees hers, bob nothing, the superadmin everyone's
    status, mine = await env["alice"].request("GET", "/usage?by=model,key&since=1h")
    assert status == 200 and mine["rows"] == [{
        "model": "echo", "key": created["id"], "requests": 2, "prompt_tokens": 5,
        "completion_tokens": 7, "total_tokens": 12, "errors": 0, "cost": 0.0, "unpriced": 2}]  # no price set
    status, theirs = await env["bob"].request("GET", "/usage?by=day")
    assert status == 200 and theirs["rows"] == []
    status, everyone = await env["root"].request("GET", "/usage?by=user")
    assert [r["user"] for r in everyone["rows"]] == [str(env["alice_id"])]
    for query, field in (("by=week", "by"), ("since=yesterday", "since"), ("since=400d", "since")):
        status, problem = await env["alice"].request("GET", f"/usage?{query}")
        assert status == 400 and field in problem["detail"], query


async def _count(env: dict[str, Any], n: int) -> bool:
    return len(await rows(env)) >= n


async def test_internal_usage_is_signed_and_idempotent(env: dict[str, Any]) -> None:
    record = UsageRecord(request_id=uuid.uuid4().hex, at=1.7e9, key_id=uuid.uuid4(), user_id=env["alice_id"],
                         model="m", prompt_tokens=5, completion_tokens=6, status=200)
    payload = {"records": [record.model_dump(mode="json")]}
    client = SignedClient(env["session"], CLUSTER)
    assert (await client.call("POST", env["url"], "/internal/usage", payload))["written"] == 1
    assert (await client.call("POST", env["url"], "/internal/usage", payload))["written"] == 0  # resent
    assert len(await rows(env)) == 1
    with pytest.raises(RPCError) as info:
        await SignedClient(env["session"], "x" * 32).call("POST", env["url"], "/internal/usage", payload)
    assert info.value.status == 401
    with pytest.raises(RPCError) as info:
        await client.call("POST", env["url"], "/internal/usage", {"records": [{"request_id": "nope"}]})
    assert info.value.status == 400


async def test_cli_usage(env: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    import time

    record = UsageRecord(request_id=uuid.uuid4().hex, at=time.time(), key_id=uuid.uuid4(), user_id=env["alice_id"],
                         model="m1", prompt_tokens=5, completion_tokens=6, status=200)
    await SignedClient(env["session"], CLUSTER).call("POST", env["url"], "/internal/usage",
                                                     {"records": [record.model_dump(mode="json")]})
    ak, sk = env["alice_keys"]
    conn = ["--endpoint", env["url"], "--access-key", ak, "--secret-key", sk]
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, main, [*conn, "usage", "--by", "model", "--csv"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "model,requests,prompt_tokens,completion_tokens,total_tokens,errors,cost", "m1,1,5,6,11,0,0.0"]
    assert await loop.run_in_executor(None, main, [*conn, "usage", "--since", "30d"]) == 0
    assert "TOTAL_TOKENS" in capsys.readouterr().out


async def test_a_proxy_stopped_with_sigterm_delivers_every_record(env: dict[str, Any], etcd_server,  # type: ignore[no-untyped-def]
                                                                  tmp_path: Path) -> None:
    """The flush interval is longer than the test: only the flush on SIGTERM can deliver the records."""
    status, created = await env["alice"].request("POST", "/api-keys", {"name": "k"})
    namespace = f"/t-{uuid.uuid4().hex[:8]}"
    etcd = EtcdStore("127.0.0.1", etcd_server.client_port, namespace)
    gateway_port = free_port()
    config = tmp_path / "appproxy.toml"
    config.write_text(f'[proxy]\ninitial_sync_timeout = 10\nshutdown_timeout = 2\n'
                      f'[etcd]\nport = {etcd_server.client_port}\nnamespace = "{namespace}"\n'
                      f'[gateway]\nport = {gateway_port}\nmanager_url = "{env["url"]}"\nusage_flush_interval = 60\n')
    proc_env = {**os.environ, "PYTHONPATH": str(REPO), "MOORAGE_APPPROXY__SECRETS__JWT_SECRET": JWT,
                "MOORAGE_APPPROXY__SECRETS__CLUSTER_SECRET": CLUSTER}
    proc = None
    try:
        await echo_table(env, env["alice_id"], etcd)
        for key, value in (await env["store"].get_prefix(APIKEYS_PREFIX)).items():
            await etcd.put(key, value)
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "appproxy", "--config", str(config),
                                                    "--log-level", "warning", cwd=REPO, env=proc_env)
        await eventually(lambda: port_accepts(gateway_port), timeout=60, what="gateway open")
        headers = {"Authorization": f"Bearer {created['key']}"}
        body = {"model": "echo", "messages": [{"role": "user", "content": "x y"}]}

        async def one() -> int:
            async with env["session"].post(f"http://127.0.0.1:{gateway_port}/v1/chat/completions", json=body,
                                           headers=headers) as resp:
                await resp.read()
                return resp.status

        await eventually(lambda: _ok(one()), timeout=30, what="gateway serving")
        statuses = await asyncio.gather(*(one() for _ in range(20)))
        assert statuses == [200] * 20
        assert await rows(env) == []  # nothing flushed yet
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        recorded = await rows(env)
        assert len(recorded) == 21 and all((r.prompt_tokens, r.completion_tokens) == (2, 3) for r in recorded)
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        await etcd.close()


async def _ok(status: Any) -> bool:
    return await status == 200


async def test_a_client_leaving_mid_stream_is_charged_what_was_produced(env: dict[str, Any]) -> None:
    status, created = await env["alice"].request("POST", "/api-keys", {"name": "k"})
    table = await echo_table(env, env["alice_id"])
    proxy = await start_proxy(env, usage_flush_interval=0.2)
    assert proxy.gateway is not None
    try:
        await eventually(lambda: proxy.routes.get(table.endpoint_id) is not None, what="table served")
        words = " ".join(["w"] * 200)  # 201 chunks 10 ms apart: the client leaves long before the end
        body = {"model": "echo", "stream": True, "messages": [{"role": "user", "content": words}]}
        async with env["session"].post(proxy.gateway.url + "/chat/completions", json=body,
                                       headers={"Authorization": f"Bearer {created['key']}"}) as resp:
            assert resp.status == 200
            seen = 0
            async for _ in resp.content.iter_any():
                seen += 1
                if seen >= 3:
                    break
        await eventually(lambda: _count(env, 1), what="the record of the abandoned stream")
    finally:
        await proxy.stop()
    (row,) = await rows(env)
    assert row.status == 499 and row.estimated
    assert 1 <= row.completion_tokens < 150 and row.prompt_tokens > 0
