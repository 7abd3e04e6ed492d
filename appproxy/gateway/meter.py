"""Usage metering: one :class:`common.usage.UsageRecord` per gateway request, sent to the manager in batches
(docs/gateway.md).

Records wait in a bounded buffer and are sent every ``usage_flush_interval`` seconds (or as soon as a full batch
is waiting). A failed send keeps them for the next attempt (the manager ignores request ids it already has, so a
batch whose answer was lost is not counted twice). Beyond ``usage_buffer_limit`` records the oldest are dropped
and counted (``moorage_appproxy_gateway_usage_dropped_total``): a manager away for long must not grow the proxy
without bound. ``close()`` (SIGTERM: the proxy's stop) sends what is left, within ``usage_close_timeout``; a
SIGKILL loses at most the records of the last flush interval.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

import aiohttp

from common.aio import cancel_and_wait
from common.signing import SignedClient
from common.usage import MAX_BATCH, UsageBatch, UsageRecord

log = logging.getLogger(__name__)

Sink = Callable[[Sequence[UsageRecord]], Awaitable[None]]


class UsageMeter:
    def __init__(self, sink: Sink | None, *, interval: float, limit: int, close_timeout: float) -> None:
        self._sink = sink
        self._interval = interval
        self._limit = limit
        self._close_timeout = close_timeout
        self._buffer: deque[UsageRecord] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.sent = 0

    def add(self, record: UsageRecord) -> None:
        if self._sink is None:
            return
        if len(self._buffer) >= self._limit:
            self._buffer.popleft()
            self.dropped += 1
        self._buffer.append(record)
        if len(self._buffer) >= MAX_BATCH:
            self._wake.set()

    def start(self) -> None:
        if self._sink is not None and self._task is None:
            self._task = asyncio.create_task(self._run(), name="gateway-usage-flush")

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        try:
            async with asyncio.timeout(self._close_timeout):
                while self._buffer:
                    if not await self.flush():
                        break
        except TimeoutError:
            pass
        if self._buffer:
            log.error("%d usage records could not be sent to the manager before stopping", len(self._buffer))

    async def flush(self) -> bool:
        """Send what is buffered, a batch at a time; False when the sink failed (the records stay)."""
        assert self._sink is not None
        while self._buffer:
            batch = [self._buffer[i] for i in range(min(MAX_BATCH, len(self._buffer)))]
            try:
                await self._sink(batch)
            except Exception as exc:  # noqa: BLE001 - manager down or refusing: keep the records, try again later
                log.warning("cannot send %d usage records to the manager (%s: %s); retrying", len(batch),
                            type(exc).__name__, exc)
                return False
            for _ in batch:
                self._buffer.popleft()
            self.sent += len(batch)
        return True

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self._interval)
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush()


def http_sink(manager_url: str, cluster_secret: str, timeout: float) -> tuple[Sink, Callable[[], Awaitable[None]]]:
    """A sink posting signed batches to the manager's ``/internal/usage``, and its closer."""
    session: aiohttp.ClientSession | None = None

    async def send(records: Sequence[UsageRecord]) -> None:
        nonlocal session
        if session is None:
            session = aiohttp.ClientSession()
        payload = UsageBatch(records=list(records)).model_dump(mode="json")
        await SignedClient(session, cluster_secret, timeout).call("POST", manager_url, "/internal/usage", payload)

    async def close() -> None:
        if session is not None:
            await session.close()

    return send, close
