"""Route table cache: the proxy's view of what the manager publishes under ``ROUTES_PREFIX``.

Each key ``ROUTES_PREFIX + <endpoint_id>`` holds one :class:`common.protocol.RouteTable` as JSON. The cache
consumes ``store.watch_prefix`` (a ``reset`` with the whole prefix, then ``put``/``delete``) and keeps
``endpoint_id → RouteTable``.

Rules:

* A value that is not a valid table (bad JSON, wrong schema, key and ``endpoint_id`` disagreeing) is logged
  and ignored: the last good table for that key, if any, stays in service. The watch loop never dies of bad
  data.
* When the store goes away (watch raises or ends) the last tables keep being served and the cache
  re-subscribes with back-off; the fresh ``reset`` then replaces the whole view. (``EtcdStore`` already
  resumes by itself; this is the second line of defence, and the only one for other stores.)
* After every applied change ``on_change()`` is called (synchronously, in the watch task) so that the frontend
  can open and close ports; the callback must not block.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Mapping

import pydantic

from common.aio import cancel_and_wait
from common.protocol import RouteTable
from common.store import ROUTES_PREFIX, KVStore, WatchEvent

log = logging.getLogger(__name__)


class RouteCache:
    RESUBSCRIBE_MIN = 0.5  # seconds; doubled after each failure ...
    RESUBSCRIBE_MAX = 5.0  # ... up to this

    def __init__(self, store: KVStore, prefix: str = ROUTES_PREFIX,
                 on_change: Callable[[], None] | None = None) -> None:
        self._store = store
        self._prefix = prefix
        self._on_change = on_change
        self._by_key: dict[str, RouteTable] = {}
        self._tables: dict[uuid.UUID, RouteTable] = {}
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()  # set once the first snapshot (reset) has been applied
        self.version = 0  # bumped on every applied change

    # -- reading ---------------------------------------------------------------------------------------------
    @property
    def tables(self) -> Mapping[uuid.UUID, RouteTable]:
        return self._tables

    def get(self, endpoint_id: uuid.UUID) -> RouteTable | None:
        return self._tables.get(endpoint_id)

    # -- applying events (synchronous, testable without a store) -----------------------------------------------
    def _parse(self, key: str, value: str | None) -> RouteTable | None:
        suffix = key[len(self._prefix):]
        try:
            key_id = uuid.UUID(suffix)
        except ValueError:
            log.error("route table key %r does not end in an endpoint id; ignored", key)
            return None
        if value is None:
            return None
        try:
            table = RouteTable.model_validate_json(value)
        except pydantic.ValidationError as exc:
            log.error("invalid route table under %r ignored (keeping the last good one, if any): %s",
                      key, exc.errors(include_url=False, include_input=False)[:3])
            return None
        if table.endpoint_id != key_id:
            log.error("route table under %r names endpoint %s; ignored", key, table.endpoint_id)
            return None
        return table

    def apply(self, event: WatchEvent) -> bool:
        """Apply one watch event; return True when the served view changed."""
        if event.type == "reset":
            new: dict[str, RouteTable] = {}
            for key, value in (event.items or {}).items():
                if not key.startswith(self._prefix):
                    continue
                table = self._parse(key, value)
                if table is None:
                    table = self._by_key.get(key)  # keep the last good table
                if table is not None:
                    new[key] = table
            changed = new != self._by_key
            self._by_key = new
        elif event.type == "put":
            if not event.key.startswith(self._prefix):
                return False
            table = self._parse(event.key, event.value)
            if table is None or self._by_key.get(event.key) == table:
                return False
            self._by_key[event.key] = table
            changed = True
        elif event.type == "delete":
            changed = self._by_key.pop(event.key, None) is not None
        else:
            log.warning("unknown watch event type %r ignored", event.type)
            return False
        if changed:
            self._tables = {t.endpoint_id: t for t in self._by_key.values()}
            self.version += 1
        return changed

    # -- the watch loop --------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="appproxy-route-watch")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def wait_ready(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.ready.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _run(self) -> None:
        delay = self.RESUBSCRIBE_MIN
        while True:
            try:
                events = self._store.watch_prefix(self._prefix)
                try:
                    async for event in events:
                        try:
                            changed = self.apply(event)
                        except Exception:  # a bug here must not stop route updates for every endpoint
                            log.exception("failed to apply route watch event %s %r", event.type, event.key)
                            continue
                        if event.type == "reset":
                            self.ready.set()
                            delay = self.RESUBSCRIBE_MIN
                        if changed:
                            self._notify()
                finally:
                    aclose = getattr(events, "aclose", None)
                    if aclose is not None:
                        with contextlib.suppress(Exception):
                            await aclose()
                log.warning("route watch on %s ended; serving the last known tables, re-subscribing in %.1fs",
                            self._prefix, delay)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any store failure: keep serving, re-subscribe
                log.warning("route watch on %s failed (%s: %s); serving the last known tables, "
                            "re-subscribing in %.1fs", self._prefix, type(exc).__name__, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.RESUBSCRIBE_MAX)

    def _notify(self) -> None:
        if self._on_change is None:
            return
        try:
            self._on_change()
        except Exception:
            log.exception("route change callback failed")
