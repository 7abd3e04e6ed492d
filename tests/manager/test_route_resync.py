"""The periodic route-table resync: a table lost from the store or overwritten by someone else is restored from
the database within ``reconcile.route_resync_period``, one hex-digit slice of the endpoints at a time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from common.status import UserRole
from common.store import ROUTES_PREFIX, MemoryStore
from manager.bootstrap import create_user
from manager.context import CTX
from manager.server import build_manager_app
from tests.manager.apiclient import APIClient
from tests.manager.inprocess import manager_config, serving
from tests.manager.test_api import ECHO_DEF, _create_body, _folder_with
from tests.services import free_port

PERIOD = 1.6  # seconds for all 16 slices


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[dict]:
    port = free_port()
    config = manager_config(tmp_path, port, appproxy={"port_range": [20000, 20009]},
                            reconcile={"interval": 0.05, "route_resync_period": PERIOD})
    store = MemoryStore()
    async with serving(build_manager_app(config, store), port) as app:
        _, access_key, secret_key = await create_user(app[CTX].db, "a@example.com", UserRole.USER,
                                                      box=app[CTX].keypair_box)
        async with aiohttp.ClientSession() as session:
            yield {"alice": APIClient(session, f"http://127.0.0.1:{port}", access_key, secret_key), "store": store}


async def wait_restored(store: MemoryStore, key: str, want: str, timeout: float) -> float:
    started = time.monotonic()
    while (got := await store.get(key)) != want:
        assert time.monotonic() - started < timeout, f"{key} not restored within {timeout} s: {got} != {want}"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_lost_and_foreign_tables_are_restored_within_the_period(manager: dict) -> None:
    alice, store = manager["alice"], manager["store"]
    await _folder_with(alice, "echo", {"model-definition.yaml": ECHO_DEF})
    ids = []
    for n in range(4):  # at zero replicas (no agent here), so their tables stay as they are
        status, info = await alice.request("POST", "/services", {**_create_body("echo", name=f"svc-{n}"),
                                                                 "replicas": 0})
        assert status == 201, info
        ids.append(info["endpoint_id"])
    keys = [ROUTES_PREFIX + i for i in ids]
    deadline = time.monotonic() + 5
    while not all([await store.get(key) for key in keys]):  # published by the create
        assert time.monotonic() < deadline, "route tables not published"
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)  # (the loop's first ticks rewrite them once the create has settled)
    tables = {key: await store.get(key) for key in keys}
    await store.delete(keys[0])  # lost (e.g. an etcd restored from an old snapshot)
    await store.put(keys[1], '{"routes": []}')  # written by someone else
    for key in keys[:2]:
        elapsed = await wait_restored(store, key, tables[key] or "", PERIOD + 1.5)
        assert elapsed <= PERIOD + 1.5
    assert [await store.get(key) for key in keys[2:]] == [tables[key] for key in keys[2:]]
