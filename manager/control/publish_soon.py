"""Coalesced route-table publishing for heartbeat handlers.

A heartbeat that moves a route (a replica became healthy or unhealthy) has its endpoint's table published at
once, so a dead replica leaves the app proxies without waiting for a tick. Published from each handler, a burst
of such beats (a rescale, agents dying: dozens per second at 200 agents) cost four queries and an etcd write per
beat. Here every endpoint handed in while a publish runs waits for that one to finish and then goes out with
the others in one ``publish_endpoints`` call: no added delay when idle, one call per round under a burst.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable
from typing import Any

from common.aio import cancel_and_wait
from manager.control.publisher import publish_endpoints

log = logging.getLogger(__name__)


class PublishSoon:
    def __init__(self, ctx: Any) -> None:  # ManagerContext (manager.context imports this module)
        self._ctx = ctx
        self._pending: set[uuid.UUID] = set()
        self._wanted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def add(self, endpoint_ids: Iterable[uuid.UUID]) -> None:
        self._pending.update(endpoint_ids)
        if self._pending:
            self._wanted.set()

    async def _run(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            batch, self._pending = self._pending, set()
            try:
                await publish_endpoints(self._ctx, batch)
            except Exception as exc:  # the database or store is down: the control loop publishes them later
                log.warning("cannot publish %d route tables now: %s", len(batch), exc)
                self._ctx.dirty_endpoints.update(batch)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="publish-soon")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
