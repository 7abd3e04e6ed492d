"""Scale from zero at the proxy: hold requests for an endpoint without routes, and tell the manager about them.

When a request (already authenticated) finds its endpoint's route table empty and the table says a replica is
coming (``hold_requests``: scaled to zero with a rule that wakes it, or a replica starting while starts are not
failing; else 503 at once) — the proxy

1. **signals demand**: writes :class:`common.protocol.DemandSignal` under ``DEMAND_PREFIX + <endpoint_id>``, at
   most once per ``demand_debounce`` seconds per endpoint (a burst of requests is one store write), refreshed at
   that pace while requests stay held. The manager wakes an endpoint at zero replicas that has an enabled
   autoscaling rule, and will not scale an endpoint with waiting requests down to zero;
2. **holds** the request (its body is not read yet) until a route appears in the table, then lets it continue
   through admission and forwarding. Bounded: at most ``hold_max_requests`` held per endpoint (more →
   503 ``hold-queue-full``) and at most ``hold_timeout`` seconds each (→ 503 ``cold-start-timeout``); both
   carry ``Retry-After`` and an RFC 7807 body. An endpoint removed meanwhile → 404. ``hold_timeout = 0``
   disables holding: 503 ``no-route-available`` at once (the demand is still signalled).

Store writes run in the background: a slow or absent store never delays a request.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable

from appproxy.config import ProxySection
from appproxy.errors import ColdStartTimeout, EndpointNotFound, HoldQueueFull, NoRouteAvailable
from appproxy.metrics import ProxyMetrics
from appproxy.routing import RouteCache
from common.aio import wait_event
from common.protocol import DEMAND_PREFIX, DemandSignal, RouteTable
from common.store import KVStore

log = logging.getLogger(__name__)
WRITE_FAILURE_LOG_INTERVAL = 60.0  # seconds between "cannot write demand" log lines


class HoldGate:
    def __init__(self, cfg: ProxySection, routes: RouteCache, store: KVStore, proxy_id: str, *,
                 metrics: ProxyMetrics | None = None, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._cfg = cfg
        self._metrics = metrics
        self._routes = routes
        self._store = store
        self.proxy_id = proxy_id
        self._clock = clock
        self._wall = wall
        self.held: Counter[uuid.UUID] = Counter()  # endpoint → requests held now
        self._changed = asyncio.Event()
        self._last_signal: dict[uuid.UUID, float] = {}
        self._writes: set[asyncio.Task[None]] = set()
        self._last_failure_log: float | None = None
        self.signals = 0  # demand writes started (diagnostics, tests)

    # -- route changes -----------------------------------------------------------------------------------------
    def routes_changed(self) -> None:
        """Wake every held request (called on each route table change)."""
        self._changed.set()
        self._changed = asyncio.Event()
        known = self._routes.tables
        for endpoint_id in [e for e in self._last_signal if e not in known]:
            del self._last_signal[endpoint_id]

    # -- demand ----------------------------------------------------------------------------------------------
    def signal(self, endpoint_id: uuid.UUID) -> bool:
        """Write the demand key unless it was written less than ``demand_debounce`` ago; True when written."""
        now = self._clock()
        last = self._last_signal.get(endpoint_id)
        if last is not None and now - last < self._cfg.demand_debounce:
            return False
        self._last_signal[endpoint_id] = now
        value = DemandSignal(endpoint_id=endpoint_id, at=self._wall(), held=self.held[endpoint_id],
                             proxy_id=self.proxy_id).model_dump_json()
        task = asyncio.create_task(self._write(DEMAND_PREFIX + str(endpoint_id), value),
                                   name=f"appproxy-demand-{endpoint_id}")
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        self.signals += 1
        return True

    async def _write(self, key: str, value: str) -> None:
        try:
            await self._store.put(key, value)
        except Exception as exc:  # the manager learns about the demand from the next write
            now = self._clock()
            if self._last_failure_log is None or now - self._last_failure_log >= WRITE_FAILURE_LOG_INTERVAL:
                self._last_failure_log = now
                log.warning("cannot signal demand under %s: %s: %s", key, type(exc).__name__, exc)

    # -- holding ---------------------------------------------------------------------------------------------
    async def wait_for_route(self, endpoint_id: uuid.UUID, table: RouteTable) -> RouteTable:
        """``table`` when it has routes; else signal demand and hold until the newest table has one."""
        if table.routes:
            return table
        cfg = self._cfg
        if cfg.hold_timeout <= 0 or not table.hold_requests:
            self.signal(endpoint_id)
            raise NoRouteAvailable("No replica of this endpoint is ready; try again shortly.",
                                   retry_after=cfg.retry_after)
        if self.held[endpoint_id] >= cfg.hold_max_requests:
            self.signal(endpoint_id)
            raise HoldQueueFull(f"{cfg.hold_max_requests} requests are already waiting for this endpoint to "
                                f"start; try again shortly.", retry_after=cfg.retry_after)
        self._count(endpoint_id, +1)
        deadline = self._clock() + cfg.hold_timeout
        try:
            while True:
                self.signal(endpoint_id)
                current = self._routes.get(endpoint_id)
                if current is None:
                    raise EndpointNotFound("This endpoint no longer exists.")
                if current.routes:
                    return current
                if not current.hold_requests:  # its starts began failing: do not keep the client waiting
                    raise NoRouteAvailable("No replica of this endpoint is ready; try again shortly.",
                                           retry_after=cfg.retry_after)
                remaining = deadline - self._clock()
                if remaining <= 0:
                    raise ColdStartTimeout(f"No replica of this endpoint became ready within "
                                           f"{cfg.hold_timeout:g}s; try again shortly.", retry_after=cfg.retry_after)
                waiter = self._changed
                await wait_event(waiter, min(remaining, cfg.demand_debounce))
        finally:
            self._count(endpoint_id, -1)

    def _count(self, endpoint_id: uuid.UUID, delta: int) -> None:
        held = self.held[endpoint_id] + delta
        if held > 0:
            self.held[endpoint_id] = held
        else:
            del self.held[endpoint_id]
        if self._metrics is not None:
            if held > 0:
                self._metrics.held[str(endpoint_id)] = held
            else:
                self._metrics.held.pop(str(endpoint_id), None)

    async def close(self) -> None:
        tasks, self._writes = list(self._writes), set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


__all__ = ["HoldGate"]
