"""The gateway's limits shared through a real Redis (127.0.0.1:6379; ``make test`` starts one): the Lua rules,
Redis unreachable or silent (fail open / closed, bounded time), and three real proxy processes against etcd
admitting exactly rpm requests out of 200 concurrent ones, then refusing a revoked key within a second each.
Every test uses its own key prefix, so parallel runs sharing the Redis do not collide."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from appproxy.gateway.limiter import LimiterUnavailable, RedisLimiter
from appproxy.gateway.limits import Limits, Refusal
from common.apikeys import APIKEYS_PREFIX, ApiKeyRecord, hash_key, new_key
from common.protocol import RouteTable
from common.store import ROUTES_PREFIX, EtcdStore
from tests.appproxy.appproxy_testkit import SECRET, eventually, free_port, port_accepts
from tests.appproxy.test_gateway import Echo

REPO = Path(__file__).resolve().parents[2]
REDIS = "redis://127.0.0.1:6379/0"


def prefix() -> str:
    return f"moorage-test:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
async def limiter() -> AsyncIterator[RedisLimiter]:
    lim = RedisLimiter(REDIS, prefix=prefix(), timeout=1.0, fail_open=False)
    yield lim
    await lim.close()


async def test_redis_rules_match_the_pure_ones(limiter: RedisLimiter) -> None:
    limits = Limits(rpm=3, tpm=100)
    decisions = [await limiter.admit("k", limits, 30, f"r{i}") for i in range(4)]
    assert [d.admitted for d in decisions if d] == [True, True, True, False]
    assert decisions[0] is not None and decisions[0].requests == 1 and decisions[0].reset_requests == 60.0
    assert decisions[3] is not None and decisions[3].refused is Refusal.REQUESTS
    assert 55 < decisions[3].retry_after <= 60
    tokens = Limits(rpm=None, tpm=100)
    assert (await limiter.admit("t", tokens, 60, "a")).admitted  # type: ignore[union-attr]
    refused = await limiter.admit("t", tokens, 60, "b")
    assert refused is not None and refused.refused is Refusal.TOKENS and refused.tokens == 60
    await limiter.correct("t", "a", 10)
    admitted = await limiter.admit("t", tokens, 60, "b")
    assert admitted is not None and admitted.admitted and admitted.tokens == 70
    assert limiter.errors == 0


async def test_concurrent_admissions_share_round_trips_and_stay_exact(limiter: RedisLimiter) -> None:
    """Admissions arriving while a script call is in flight go together in the next one: fewer round trips
    than requests, and the limit exact all the same."""
    limits = Limits(rpm=25, tpm=None)
    decisions = await asyncio.gather(*(limiter.admit("k", limits, 1, f"r{i}") for i in range(60)))
    assert sum(1 for d in decisions if d is not None and d.admitted) == 25
    assert [d.requests for d in decisions[:25] if d] == list(range(1, 26))  # in arrival order
    assert limiter.round_trips < 60 / 2
    assert limiter.errors == 0


async def test_deferred_correction_rides_with_the_next_admission(limiter: RedisLimiter) -> None:
    tokens = Limits(rpm=None, tpm=100)
    assert (await limiter.admit("t", tokens, 60, "a")).admitted  # type: ignore[union-attr]
    before = limiter.round_trips
    limiter.defer_correct("t", "a", 10)  # the request that ended does not wait
    admitted = await limiter.admit("t", tokens, 60, "b")
    assert admitted is not None and admitted.admitted and admitted.tokens == 70  # corrected first
    assert limiter.round_trips == before + 1  # correction and admission: one script call


async def test_deferred_correction_alone_is_sent_within_the_delay(limiter: RedisLimiter) -> None:
    tokens = Limits(rpm=None, tpm=100)
    assert (await limiter.admit("t", tokens, 60, "a")).admitted  # type: ignore[union-attr]
    limiter.defer_correct("t", "a", 7)
    hash_key_ = limiter._keys("t")[1]
    assert await limiter._redis.hget(hash_key_, "_total") == b"60"  # not yet: it waits for an admission
    await asyncio.sleep(limiter.CORRECT_DELAY + 0.3)
    assert await limiter._redis.hget(hash_key_, "_total") == b"7"


async def test_a_busy_window_expiring_at_once(limiter: RedisLimiter) -> None:
    """A key that ran thousands of requests a minute ago, then paused: all its entries expire in one admission
    (more than Lua's unpack() takes at once) and the admission still works."""
    z, h = limiter._keys("busy")
    ids = [f"old{i}" for i in range(20_000)]
    await limiter._redis.zadd(z, dict.fromkeys(ids, 1))  # scored at 1 ms after the epoch: long expired
    await limiter._redis.hset(h, mapping={**dict.fromkeys(ids, 3), "_total": 60_000})
    decision = await limiter.admit("busy", Limits(rpm=10, tpm=100), 5, "new")
    assert decision is not None and decision.admitted and decision.requests == 1 and decision.tokens == 5
    assert limiter.errors == 0
    assert await limiter._redis.zcard(z) == 1 and await limiter._redis.hlen(h) == 2  # "new" and "_total"


class Silent:
    """Accepts connections and never answers: a hung Redis."""

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self._hold, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 20)

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()


@pytest.mark.parametrize("hung", [False, True])
async def test_redis_unreachable_fails_open_or_closed_quickly(hung: bool, caplog: pytest.LogCaptureFixture) -> None:
    async with Silent() as silent_port:
        url = f"redis://127.0.0.1:{silent_port if hung else free_port()}/0"
        open_ = RedisLimiter(url, prefix=prefix(), timeout=0.2, fail_open=True)
        closed = RedisLimiter(url, prefix=prefix(), timeout=0.2, fail_open=False)
        try:
            started = time.monotonic()
            assert await open_.admit("k", Limits(rpm=1, tpm=None), 1, "a") is None
            with pytest.raises(LimiterUnavailable):
                await closed.admit("k", Limits(rpm=1, tpm=None), 1, "a")
            await open_.correct("k", "a", 5)  # never raises
            assert time.monotonic() - started < 2.0
            assert open_.errors == 2 and closed.errors == 1
            assert "rate-limit Redis unreachable" in caplog.text
        finally:
            await open_.close()
            await closed.close()


@pytest.fixture
async def three_proxies(etcd_server, tmp_path: Path) -> AsyncIterator[dict]:  # type: ignore[no-untyped-def]
    namespace = f"/t-{uuid.uuid4().hex[:8]}"
    writer = EtcdStore("127.0.0.1", etcd_server.client_port, namespace)
    echo = Echo()
    procs: list[asyncio.subprocess.Process] = []
    ports = [free_port() for _ in range(3)]
    key_prefix = prefix()
    try:
        async with aiohttp.ClientSession() as session:
            await echo.ready(session)
        owner = uuid.uuid4()
        table = RouteTable(endpoint_id=uuid.uuid4(), name="echo", owner_id=owner, routes=[echo.target()])
        await writer.put(ROUTES_PREFIX + str(table.endpoint_id), table.model_dump_json())
        key = new_key()
        record = ApiKeyRecord(key_id=uuid.uuid4(), key_hash=hash_key(key), owner_id=owner, rpm=50)
        await writer.put(APIKEYS_PREFIX + record.key_hash, record.model_dump_json())
        env = {**os.environ, "PYTHONPATH": str(REPO), "MOORAGE_APPPROXY__SECRETS__JWT_SECRET": SECRET}
        for i, port in enumerate(ports):
            config = tmp_path / f"appproxy{i}.toml"
            config.write_text(f'[proxy]\ninitial_sync_timeout = 10\nshutdown_timeout = 1\n'
                              f'[etcd]\nport = {etcd_server.client_port}\nnamespace = "{namespace}"\n'
                              f'[gateway]\nport = {port}\nredis_url = "{REDIS}"\nredis_key_prefix = "{key_prefix}"\n'
                              f'fail_open = false\nredis_timeout = 2.0\n')
            procs.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "appproxy", "--config", str(config), "--log-level", "warning", cwd=REPO,
                env=env))
        for port in ports:
            await eventually(lambda p=port: port_accepts(p), timeout=60, what=f"gateway {port} open")
        yield {"ports": ports, "key": key, "record": record, "store": writer}
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        echo.proc.kill()
        echo.proc.wait(10)
        await writer.close()


async def test_three_proxies_share_one_rpm_exactly_and_revocation_reaches_each(three_proxies: dict) -> None:
    ports, key = three_proxies["ports"], three_proxies["key"]
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def models(port: int) -> int:
            async with session.get(f"http://127.0.0.1:{port}/v1/models", headers=headers) as resp:
                return resp.status

        async def knows_key(port: int) -> bool:
            return await models(port) == 200

        for port in ports:  # each proxy has the key and the table before the burst
            await eventually(lambda p=port: knows_key(p), timeout=30, what=f"proxy {port} knows the key")

        async def one(i: int) -> int:
            async with session.post(f"http://127.0.0.1:{ports[i % 3]}/v1/chat/completions", json=body,
                                    headers=headers) as resp:
                await resp.read()
                return resp.status

        statuses = Counter(await asyncio.gather(*(one(i) for i in range(200))))
        assert statuses == {200: 50, 429: 150}, statuses

        await three_proxies["store"].delete(APIKEYS_PREFIX + three_proxies["record"].key_hash)
        revoked_at = time.monotonic()
        pending = set(ports)
        while pending:
            for port in list(pending):
                if await models(port) == 401:
                    pending.discard(port)
            assert time.monotonic() - revoked_at < 1.0, f"proxies {pending} still accept the revoked key"
            await asyncio.sleep(0.01)

