"""Route tables through a REAL etcd: the proxy keeps serving while etcd is down, resumes when it is back, and a
restarted proxy re-syncs at start."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid

from appproxy.server import AppProxy
from common.store import ROUTES_PREFIX, EtcdStore
from tests.appproxy.appproxy_testkit import eventually, free_port, make_table
from tests.appproxy.conftest import proxy_config


async def put_until_done(store: EtcdStore, key: str, value: str, timeout: float = 20.0) -> None:
    """Put, retrying while etcd is still coming back (deadline, not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await store.put(key, value)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_etcd_restart_during_traffic(private_etcd, upstreams, http):
    a, b, c = await upstreams("a"), await upstreams("b"), await upstreams("c")
    namespace = f"/t-{uuid.uuid4().hex[:8]}"
    writer = EtcdStore("127.0.0.1", private_etcd.client_port, namespace)
    table = make_table(port=free_port(), routes=[a.target()], open_to_public=True)
    key = ROUTES_PREFIX + str(table.endpoint_id)
    await writer.put(key, table.model_dump_json())
    store = EtcdStore("127.0.0.1", private_etcd.client_port, namespace)
    proxy = AppProxy(proxy_config(), store, rng=random.Random(3))
    await proxy.start()
    url = f"http://127.0.0.1:{table.port}/echo"
    served: list[str] = []
    failures: list[str] = []
    stop = asyncio.Event()

    async def traffic() -> None:
        while not stop.is_set():
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        served.append((await resp.json())["name"])
                    else:
                        failures.append(str(resp.status))
            except Exception as exc:  # noqa: BLE001
                failures.append(repr(exc))
            await asyncio.sleep(0.01)

    load = asyncio.create_task(traffic())
    try:
        await eventually(lambda: served.count("a") >= 5, what="traffic flowing")
        private_etcd.stop()  # etcd goes away mid-traffic
        during = len(served)
        await eventually(lambda: len(served) >= during + 30, timeout=15, what="serving while etcd is down")
        assert proxy.routes.get(table.endpoint_id) == table

        private_etcd.start()  # same ports, same data dir
        changed = table.model_copy(update={"routes": [b.target()], "updated_at": time.time() + 1})
        await put_until_done(writer, key, changed.model_dump_json())
        await eventually(lambda: served[-3:] == ["b", "b", "b"], timeout=20, what="change applied after restart")
    finally:
        stop.set()
        await load
        await proxy.stop()
        await store.close()
    assert not failures, failures[:5]

    # a restarted proxy re-syncs at start: a change made while no proxy ran is served at once
    moved = changed.model_copy(update={"routes": [c.target()], "updated_at": time.time() + 2})
    await put_until_done(writer, key, moved.model_dump_json())
    store = EtcdStore("127.0.0.1", private_etcd.client_port, namespace)
    proxy = AppProxy(proxy_config(), store)
    try:
        await proxy.start()
        assert proxy.routes.get(table.endpoint_id) == moved
        async with http.get(url) as resp:
            assert (await resp.json())["name"] == "c"
    finally:
        await proxy.stop()
        await store.close()
        with contextlib.suppress(Exception):
            await writer.delete(key)
        await writer.close()
