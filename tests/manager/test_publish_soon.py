"""PublishSoon: endpoints handed in while a publish runs go out together in the next one; none is dropped."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from manager.control import publish_soon
from manager.control.publish_soon import PublishSoon


class Ctx:
    def __init__(self) -> None:
        self.dirty_endpoints: set[uuid.UUID] = set()


async def test_a_burst_is_coalesced_and_failures_go_to_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[set[uuid.UUID]] = []
    release = asyncio.Event()
    fail = False

    async def slow_publish(ctx: Ctx, endpoint_ids: set[uuid.UUID]) -> None:
        calls.append(set(endpoint_ids))
        await release.wait()
        if fail:
            raise ConnectionError("etcd is down")

    monkeypatch.setattr(publish_soon, "publish_endpoints", slow_publish)
    ctx = Ctx()
    publisher = PublishSoon(ctx)
    publisher.start()
    try:
        first, *burst = [uuid.uuid4() for _ in range(5)]
        publisher.add([first])
        await asyncio.sleep(0.01)
        assert calls == [{first}]  # no added delay when idle
        for endpoint_id in burst:  # arrive while the first publish runs
            publisher.add([endpoint_id])
        release.set()
        for _ in range(100):
            if len(calls) == 2:
                break
            await asyncio.sleep(0.01)
        assert calls == [{first}, set(burst)]  # one call for the whole burst
        fail, release = True, asyncio.Event()
        lost = uuid.uuid4()
        publisher.add([lost])
        await asyncio.sleep(0.01)
        release.set()
        await asyncio.sleep(0.01)
        assert ctx.dirty_endpoints == {lost}  # the control loop publishes it later
    finally:
        await publisher.close()
