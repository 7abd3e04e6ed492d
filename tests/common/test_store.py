"""The KV store: memory and real etcd, including an etcd restart during a watch."""

from __future__ import annotations

import asyncio

from common.store import EtcdStore, MemoryStore, WatchEvent
from tests.services import EtcdServer


async def _next(it, timeout: float = 10.0) -> WatchEvent:
    return await asyncio.wait_for(it.__anext__(), timeout)


async def test_memory_store_watch() -> None:
    store = MemoryStore()
    await store.put("/p/a", "1")
    watch = store.watch_prefix("/p/")
    reset = await _next(watch)
    assert reset.type == "reset" and reset.items == {"/p/a": "1"}
    await store.put("/q/x", "ignored")
    await store.put("/p/b", "2")
    await store.delete("/p/a")
    assert (await _next(watch)) == WatchEvent("put", "/p/b", "2")
    assert (await _next(watch)) == WatchEvent("delete", "/p/a")
    await watch.aclose()


async def test_etcd_store_roundtrip_and_watch(etcd_server: EtcdServer) -> None:
    store = EtcdStore("127.0.0.1", etcd_server.client_port, namespace="/t1")
    try:
        await store.put("/routes/a", "1")
        assert await store.get("/routes/a") == "1"
        assert await store.get_prefix("/routes/") == {"/routes/a": "1"}
        watch = store.watch_prefix("/routes/")
        reset = await _next(watch)
        assert reset.items == {"/routes/a": "1"}
        await store.put("/routes/b", "2")
        assert (await _next(watch)) == WatchEvent("put", "/routes/b", "2")
        await store.delete("/routes/a")
        assert (await _next(watch)) == WatchEvent("delete", "/routes/a")
        await watch.aclose()
    finally:
        await store.close()


async def test_etcd_watch_resumes_after_restart() -> None:
    server = EtcdServer()
    server.start()
    try:
        store = EtcdStore("127.0.0.1", server.client_port)
        writer = EtcdStore("127.0.0.1", server.client_port)
        watch = store.watch_prefix("/r/")
        assert (await _next(watch)).type == "reset"
        await writer.put("/r/one", "1")
        assert (await _next(watch)) == WatchEvent("put", "/r/one", "1")
        server.stop()
        await asyncio.sleep(1.5)  # the watch notices and backs off
        server.start()
        # A change made after the restart arrives on the same iterator (resumed from the last revision).
        for _ in range(50):
            try:
                await writer.put("/r/two", "2")
                break
            except Exception:
                await asyncio.sleep(0.2)
        event = await _next(watch, 20)
        assert event == WatchEvent("put", "/r/two", "2")
        await watch.aclose()
        await store.close()
        await writer.close()
    finally:
        server.close()


async def test_etcd_store_operations_recover_after_restart() -> None:
    """Plain put/get (the manager's route publisher) work again right after etcd comes back."""
    server = EtcdServer()
    server.start()
    try:
        store = EtcdStore("127.0.0.1", server.client_port)
        await store.put("/k", "1")
        server.stop()
        server.start()
        for _ in range(50):
            try:
                await store.put("/k", "2")
                break
            except Exception:
                await asyncio.sleep(0.2)
        assert await store.get("/k") == "2"
        assert await store.get_prefix("/") == {"/k": "2"}
        await store.close()
    finally:
        server.close()
