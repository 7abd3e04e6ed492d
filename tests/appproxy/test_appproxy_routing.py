"""Route table cache: event semantics, bad data, and a store that goes away."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

from appproxy.routing import RouteCache
from common.protocol import RouteTarget
from common.store import ROUTES_PREFIX, MemoryStore, WatchEvent
from tests.appproxy.appproxy_testkit import eventually, make_table, publish, unpublish


def route(port: int = 9000) -> RouteTarget:
    return RouteTarget(route_id=uuid.uuid4(), host="127.0.0.1", port=port)


def key(table) -> str:
    return ROUTES_PREFIX + str(table.endpoint_id)


def test_reset_put_delete():
    cache = RouteCache(MemoryStore())
    t1, t2 = make_table(port=30001, routes=[route()]), make_table(port=30002, routes=[route()])
    assert cache.apply(WatchEvent("reset", items={key(t1): t1.model_dump_json()}))
    assert cache.get(t1.endpoint_id) == t1 and cache.version == 1
    assert cache.apply(WatchEvent("put", key(t2), t2.model_dump_json()))
    assert set(cache.tables) == {t1.endpoint_id, t2.endpoint_id}
    assert not cache.apply(WatchEvent("put", key(t2), t2.model_dump_json()))  # same table: no change
    assert cache.apply(WatchEvent("delete", key(t1)))
    assert set(cache.tables) == {t2.endpoint_id}
    assert not cache.apply(WatchEvent("delete", key(t1)))
    # a reset is the whole truth: what it does not contain is gone
    assert cache.apply(WatchEvent("reset", items={}))
    assert cache.tables == {}


def test_bad_values_are_ignored_and_keep_the_last_good_table():
    cache = RouteCache(MemoryStore())
    good = make_table(port=30001, routes=[route()])
    cache.apply(WatchEvent("put", key(good), good.model_dump_json()))
    assert not cache.apply(WatchEvent("put", key(good), "{broken"))
    assert not cache.apply(WatchEvent("put", key(good), '{"endpoint_id": "not-a-uuid"}'))
    other = make_table(port=30002, routes=[])
    assert not cache.apply(WatchEvent("put", key(good), other.model_dump_json()))  # names another endpoint
    assert not cache.apply(WatchEvent("put", ROUTES_PREFIX + "not-an-id", good.model_dump_json()))
    assert cache.get(good.endpoint_id) == good
    # in a reset, a broken value keeps the last good table too, while valid ones are taken
    cache.apply(WatchEvent("reset", items={key(good): "{broken", key(other): other.model_dump_json()}))
    assert cache.get(good.endpoint_id) == good and cache.get(other.endpoint_id) == other


async def test_watch_follows_the_store():
    store = MemoryStore()
    changes = []
    t1 = make_table(port=30001, routes=[route()])
    await publish(store, t1)
    cache = RouteCache(store, on_change=lambda: changes.append(cache.version))
    cache.start()
    try:
        assert await cache.wait_ready(5)
        assert cache.get(t1.endpoint_id) == t1
        t2 = make_table(port=30002, routes=[route()])
        await publish(store, t2)
        await eventually(lambda: cache.get(t2.endpoint_id) == t2, what="put applied")
        await store.put(key(t2), "garbage")  # must not kill the watch loop
        await unpublish(store, t1.endpoint_id)
        await eventually(lambda: cache.get(t1.endpoint_id) is None, what="delete applied")
        assert cache.get(t2.endpoint_id) == t2
        assert changes == [1, 2, 3]
    finally:
        await cache.stop()


class FlakyStore(MemoryStore):
    """A MemoryStore whose watch breaks (like a lost etcd connection) until ``healthy`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.healthy = asyncio.Event()
        self.broken_watches = 0

    async def watch_prefix(self, prefix: str) -> AsyncIterator[WatchEvent]:
        if not self.healthy.is_set():
            yield WatchEvent("reset", items=await self.get_prefix(prefix))
            self.broken_watches += 1
            raise ConnectionError("store went away")
        async for event in super().watch_prefix(prefix):
            yield event


async def test_tables_survive_the_store_going_away():
    store = FlakyStore()
    t1 = make_table(port=30001, routes=[route()])
    await publish(store, t1)
    cache = RouteCache(store)
    cache.RESUBSCRIBE_MIN = cache.RESUBSCRIBE_MAX = 0.05
    cache.start()
    try:
        assert await cache.wait_ready(5)
        await eventually(lambda: store.broken_watches >= 2, what="watch re-subscribed after failures")
        assert cache.get(t1.endpoint_id) == t1  # still served while the store is away
        t2 = make_table(port=30002, routes=[route()])
        await publish(store, t2)
        store.healthy.set()
        await eventually(lambda: cache.get(t2.endpoint_id) == t2, what="converged after the store came back")
        assert cache.get(t1.endpoint_id) == t1
    finally:
        await cache.stop()
