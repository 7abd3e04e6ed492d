from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from appproxy.config import ProxyConfig
from appproxy.server import AppProxy
from common.config import deep_merge
from common.protocol import RouteTable
from common.store import MemoryStore
from tests.appproxy.appproxy_testkit import SECRET, Upstream, eventually, publish


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
async def upstreams() -> AsyncIterator[Callable[[str], Awaitable[Upstream]]]:
    started: list[Upstream] = []

    async def make(name: str) -> Upstream:
        upstream = await Upstream(name).start()
        started.append(upstream)
        return upstream

    yield make
    for upstream in started:
        upstream.release.set()
        await upstream.stop()


def proxy_config(**sections: dict[str, Any]) -> ProxyConfig:
    base: dict[str, Any] = {
        "proxy": {"bind_retry_interval": 0.2, "initial_sync_timeout": 2.0, "shutdown_timeout": 1.0,
                  "upstream_connect_timeout": 2.0},
        "outlier": {"base_ejection": 30.0, "max_ejection": 60.0},
        "secrets": {"jwt_secret": SECRET},
    }
    return ProxyConfig.model_validate(deep_merge(base, sections))


@pytest.fixture
async def make_proxy(store: MemoryStore) -> AsyncIterator[Callable[..., Awaitable[AppProxy]]]:
    started: list[AppProxy] = []

    async def make(**sections: dict[str, Any]) -> AppProxy:
        proxy = AppProxy(proxy_config(**sections), store, rng=random.Random(7))
        await proxy.start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        await proxy.stop()


@pytest.fixture
async def serve(store: MemoryStore) -> Callable[[AppProxy, RouteTable], Awaitable[str]]:
    """Publish a table and wait until the proxy serves exactly it; return the endpoint's base URL."""

    async def do(proxy: AppProxy, table: RouteTable) -> str:
        await publish(store, table)
        await eventually(lambda: proxy.routes.get(table.endpoint_id) == table
                         and proxy.frontend.ports.get(table.port) == table.endpoint_id,
                         what=f"endpoint {table.endpoint_id} served on port {table.port}")
        return f"http://127.0.0.1:{table.port}"

    return do


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session
