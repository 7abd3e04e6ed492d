"""Registration in etcd under a lease (common.lease.LeaseKeeper), against a real etcd that is restarted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.server import AGENT_KEY
from common.lease import LeaseKeeper
from common.store import AGENTS_PREFIX, EtcdStore, WatchEvent
from tests.agent.conftest import make_config, running_agent, wait_for
from tests.services import EtcdServer


@pytest.fixture
def namespace() -> str:
    return f"/t-{secrets.token_hex(4)}"


@contextlib.asynccontextmanager
async def watching(store: EtcdStore, prefix: str) -> AsyncIterator[dict[str, str]]:
    """A live view of ``prefix`` kept by store.watch_prefix (as the manager would keep it)."""
    view: dict[str, str] = {}

    async def pump() -> None:
        async for ev in store.watch_prefix(prefix):
            _apply(view, ev)

    task = asyncio.create_task(pump())
    try:
        yield view
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


def _apply(view: dict[str, str], ev: WatchEvent) -> None:
    if ev.type == "reset":
        view.clear()
        view.update(ev.items or {})
    elif ev.type == "put":
        view[ev.key] = ev.value or ""
    else:
        view.pop(ev.key, None)


async def test_lease_keeper_survives_etcd_restart_and_regrants_a_lost_lease(private_etcd: EtcdServer,
                                                                              namespace: str) -> None:
    granted: list[int] = []
    lost: list[float] = []

    async def attach(store: EtcdStore, lease_id: int) -> None:
        granted.append(lease_id)
        await store.put_with_lease("/k", "v", lease_id)

    keeper = LeaseKeeper(lambda: EtcdStore(port=private_etcd.client_port, namespace=namespace), 3, attach,
                         on_lost=lambda: lost.append(time.monotonic()), name="test")
    task = asyncio.create_task(keeper.run())
    other = EtcdStore(port=private_etcd.client_port, namespace=namespace)
    try:
        await asyncio.wait_for(keeper.registered.wait(), 20)
        first = keeper.lease_id
        assert await other.get("/k") == "v"

        # etcd restarts (same data dir): the lease survives, the key stays, the keeper carries on.
        private_etcd.stop()
        await asyncio.sleep(1.5)
        private_etcd.start()
        await other.close()
        other = EtcdStore(port=private_etcd.client_port, namespace=namespace)
        await wait_for(lambda: keeper.holding, 20, "the keeper to refresh again")
        assert keeper.lease_id == first and not lost
        assert await other.get("/k") == "v"

        # The lease expires behind its back (revoked here): it notices, re-grants and re-attaches.
        await other.revoke_lease(first)
        assert await other.get("/k") is None
        await wait_for(lambda: keeper.lease_id not in (None, first) and keeper.holding, 20, "a new lease")
        assert lost and keeper.grants == 2
        await wait_for(lambda: _get_is(other, "/k", "v"), 10, "the key re-attached")

        # A clean close revokes: the key disappears at once.
        await keeper.close()
        assert await other.get("/k") is None
    finally:
        await keeper.close(revoke=False)
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        await other.close()


async def _get_is(store: EtcdStore, key: str, value: str) -> bool:
    return await store.get(key) == value


async def test_agent_registers_in_etcd_and_recovers_after_an_etcd_restart(tmp_path: Path, private_etcd: EtcdServer,
                                                                            namespace: str) -> None:
    config = make_config(tmp_path, {"etcd": {"host": "127.0.0.1", "port": private_etcd.client_port,
                                             "namespace": namespace, "lease_ttl": 3}})
    key = AGENTS_PREFIX + "test-agent"
    observer = EtcdStore(port=private_etcd.client_port, namespace=namespace)
    try:
        async with watching(observer, AGENTS_PREFIX) as view:
            async with running_agent(config) as agent:
                await wait_for(lambda: key in view, 20, "the agent's registration in the watched view")
                info = json.loads(view[key])
                assert info["agent_id"] == "test-agent" and info["rpc_url"] and "cpu" in info["available_slots"]
                assert (await agent.rpc("GET", "/rpc/health"))["registered"]

                # etcd restarts while the agent runs: the watch and the registration recover.
                private_etcd.stop()
                await asyncio.sleep(1.0)
                private_etcd.start()
                agent_obj = agent.app[AGENT_KEY]
                await wait_for(lambda: agent_obj.lease.holding, 20, "the agent to refresh its lease again")
                # Lease lost meanwhile (expired): the agent re-registers; the watcher sees it come back.
                fresh = EtcdStore(port=private_etcd.client_port, namespace=namespace)
                await fresh.revoke_lease(agent_obj.lease.lease_id)
                await wait_for(lambda: key not in view, 20, "the watcher to see the registration vanish")
                await wait_for(lambda: key in view, 20, "the re-registration to reach the watcher")
                await fresh.close()
            # A clean stop deregisters at once.
            await wait_for(lambda: key not in view, 10, "deregistration on a clean stop")
    finally:
        await observer.close()


async def test_agent_without_etcd_config_does_not_register(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="agent.server")
    async with running_agent(make_config(tmp_path)) as agent:
        assert not (await agent.rpc("GET", "/rpc/health"))["registered"]
    lines = [r.getMessage() for r in caplog.records if "not registering in etcd" in r.getMessage()]
    assert len(lines) == 1
