"""Heartbeats to the manager (``POST {manager_url}/internal/heartbeat``, signed).

Level-triggered: each heartbeat carries the agent's info and its full kernel list. One is sent every
``heartbeat_interval`` and at once after :meth:`HeartbeatLoop.wake` (kernel transitions); wakes that arrive
while a heartbeat is in flight are coalesced into the next one. The reply's ``destroy`` list is applied.
An unreachable manager is logged at most once per :data:`FAILURE_LOG_INTERVAL`; the loop keeps going.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

import aiohttp
from pydantic import ValidationError

from common.aio import wait_event
from common.protocol import AgentHeartbeat, HeartbeatReply
from common.signing import RPCError, SignedClient

log = logging.getLogger(__name__)

HEARTBEAT_PATH = "/internal/heartbeat"
FAILURE_LOG_INTERVAL = 60.0  # seconds between "manager unreachable" log lines
COALESCE_DELAY = 0.05  # seconds to let a burst of transitions settle into one heartbeat


class HeartbeatLoop:
    def __init__(
        self,
        client: SignedClient,
        manager_url: str,
        build: Callable[[], AgentHeartbeat],
        destroy: Callable[[uuid.UUID], Awaitable[None]],
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._client = client
        self._url = manager_url
        self._build = build
        self._destroy = destroy
        self._interval = interval
        self._clock = clock
        self._wake = asyncio.Event()
        self._wake.set()  # the first heartbeat goes out at once
        self._last_failure_log: float | None = None
        self._failing = False
        self._destroys: set[asyncio.Task[None]] = set()
        self.sent = 0  # successful heartbeats (for tests and diagnostics)

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        try:
            while True:
                await wait_event(self._wake, self._interval)
                await asyncio.sleep(COALESCE_DELAY)
                self._wake.clear()
                try:
                    await self.send_once()
                except Exception as exc:  # a bug in building the payload must not end the heartbeats
                    log.exception("heartbeat failed")
                    self._failed(exc)
        finally:
            for task in self._destroys:
                task.cancel()

    async def send_once(self) -> HeartbeatReply | None:
        payload = self._build().model_dump(mode="json")
        try:
            data = await self._client.call("POST", self._url, HEARTBEAT_PATH, payload,
                                           timeout=max(2.0, min(10.0, self._interval * 3)))
            reply = HeartbeatReply.model_validate(data if isinstance(data, dict) else {})
        except (TimeoutError, aiohttp.ClientError, OSError, RPCError, ValidationError) as exc:
            self._failed(exc)
            return None
        self.sent += 1
        if self._failing:
            log.info("manager at %s is reachable again", self._url)
            self._failing = False
        for kernel_id in reply.destroy:
            task = asyncio.create_task(self._destroy_one(kernel_id))
            self._destroys.add(task)
            task.add_done_callback(self._destroys.discard)
        return reply

    async def _destroy_one(self, kernel_id: uuid.UUID) -> None:
        log.info("manager asked to destroy kernel %s", kernel_id)
        try:
            await self._destroy(kernel_id)
        except Exception:
            log.exception("cannot destroy kernel %s", kernel_id)

    def _failed(self, exc: BaseException) -> None:
        self._failing = True
        now = self._clock()
        if self._last_failure_log is None or now - self._last_failure_log >= FAILURE_LOG_INTERVAL:
            self._last_failure_log = now
            detail = str(exc) or type(exc).__name__
            log.warning("heartbeat to %s failed: %s (retrying every %.1fs; logged at most once a minute)",
                        self._url, detail, self._interval)
