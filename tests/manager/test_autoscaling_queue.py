"""A rule "scale out when the gateway queue holds more than 5" inside a real manager (SQLite, the real control loop
and autoscaler), fed by a signed proxy admin API answering in the app proxy's report format with the gateway's
queue (``proxy.queued``, as ``appproxy.scrape.ReplicaScraper.report`` writes it: tests/appproxy/test_gateway_queue.py
checks that side against a real saturated gateway)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from common.protocol import PROXIES_PREFIX, ProxyRegistration
from tests.manager.test_autoscaling import (
    FakeProxyAdmin,
    add_rule,
    create_service,
    decisions,
    manager,  # noqa: F401 - a fixture
    replicas,
    wait_replicas,
)


class QueueingProxyAdmin(FakeProxyAdmin):
    def __init__(self) -> None:
        super().__init__()
        self.queued = 0

    async def metrics(self, request: web.Request) -> web.Response:
        self.calls += 1
        return web.json_response({"endpoint_id": request.match_info["endpoint_id"], "collected_at": time.time(),
                                  "replicas": 1, "metrics": {},
                                  "proxy": {"rps": 0.0, "in_flight": 1, "queued": self.queued, "queue_wait": 2.5}})


async def test_scale_out_when_the_queue_holds_more_than_five(manager: dict[str, Any]) -> None:  # noqa: F811
    alice, app, store = manager["alice"], manager["app"], manager["store"]
    fake = QueueingProxyAdmin()
    await fake.start()
    await store.put(PROXIES_PREFIX + "fake", ProxyRegistration(proxy_id="fake", admin_url=fake.url).model_dump_json())
    eid = await create_service(alice, "queue-svc", 1)
    await add_rule(alice, eid, metric_source="PROXY", metric_name="queue_length", comparator="GREATER_THAN",
                   threshold=5, step_size=1, max_replicas=2, cooldown_seconds=1)
    fake.queued = 5  # not more than 5: nothing fires
    await asyncio.sleep(1.0)
    assert await replicas(app, eid) == 1
    fake.queued = 6
    await wait_replicas(app, eid, 2)
    applied = await decisions(alice, eid, "?applied_only=true")
    assert applied[0]["metric_name"] == "queue_length" and applied[0]["observed"] == 6.0
    assert fake.runner is not None
    await fake.runner.cleanup()
