"""Keep an etcd lease alive and keep keys attached to it, across etcd restarts and lease expiry.

Used by the agent's registration (``/moorage/agents/<id>`` → AgentInfo JSON) and by the manager's leader
election (:mod:`manager.control.leader`). ::

    keeper = LeaseKeeper(lambda: EtcdStore(host, port, namespace), ttl=10, on_granted=register)
    task = asyncio.create_task(keeper.run())
    ...
    await keeper.close()            # stops the loop and revokes the lease (the keys vanish at once)

Behaviour:

* ``run()`` grants a lease of ``ttl`` seconds and calls ``on_granted(store, lease_id)``, which attaches the
  keys (``store.put_with_lease``). It then refreshes every ``ttl / 3`` seconds.
* etcd unreachable: retries with back-off (``RETRY_MIN`` … ``RETRY_MAX``) on a FRESH client each time (a gRPC
  channel that saw its server die backs off for a long time). When etcd answers again the lease is refreshed
  and ``on_granted`` runs again with the same lease (idempotent puts: keys deleted meanwhile come back).
  etcd persists leases and renews their TTL when it restarts, so a restart alone does not lose the lease.
* Lease gone (refresh says TTL ≤ 0, i.e. it expired or was revoked while we were away, or etcd lost its
  data): ``on_lost()`` is called (leader election steps down here), a new lease is granted and
  ``on_granted`` runs again. Without a successful refresh for ``ttl`` seconds the lease is considered lost
  as well (``on_lost`` runs at once: better to step down early than to act on an expired lease).
* Failures are logged once per outage, and recovery once.
* ``alive_until`` is the monotonic time before which etcd cannot have expired the lease: ``ttl`` after the last
  successful grant or refresh was *sent* (etcd restarts the TTL when it receives it, which is later). Leader
  election stops acting before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)


class LeaseKeeper:
    RETRY_MIN = 0.2
    RETRY_MAX = 2.0

    def __init__(
        self,
        store_factory: Callable[[], Any],
        ttl: int,
        on_granted: Callable[[Any, int], Awaitable[None]],
        *,
        on_lost: Callable[[], Awaitable[None] | None] | None = None,
        name: str = "lease",
        clock: Callable[[], float] = time.monotonic,
    ):
        if ttl < 2:
            raise ValueError("ttl must be at least 2 seconds")
        self._factory = store_factory
        self.ttl = ttl
        self._on_granted = on_granted
        self._on_lost = on_lost
        self.name = name
        self._clock = clock
        self._store: Any = None
        self.lease_id: int | None = None
        self._last_ok: float = 0.0  # when the last grant or refresh succeeded (answered)
        self._last_sent_ok: float = 0.0  # when that request was sent: etcd restarted the TTL after this
        self._attached = False  # on_granted succeeded for the current lease since the last outage
        self._failing = False
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.grants = 0  # leases granted so far (for tests and diagnostics)
        self.registered = asyncio.Event()  # set while the keys are attached to a live lease

    @property
    def alive_until(self) -> float:
        """Before this (``clock`` time) the lease is certainly alive in etcd; 0 while we hold none."""
        return self._last_sent_ok + self.ttl if self.lease_id is not None else 0.0

    @property
    def holding(self) -> bool:
        """True while we hold a lease that was refreshed within its TTL."""
        return self.lease_id is not None and self._attached and self._clock() - self._last_ok < self.ttl

    def _fresh_store(self) -> Any:
        if self._store is None:
            self._store = self._factory()
        return self._store

    async def _drop_store(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            with contextlib.suppress(Exception):
                await store.close()

    async def run(self) -> None:
        self._task = asyncio.current_task()
        delay = self.RETRY_MIN
        try:
            while not self._closed:
                try:
                    await self._step()
                    delay = self.RETRY_MIN
                except (asyncio.CancelledError, GeneratorExit):
                    raise
                except Exception as exc:
                    self._failure(exc)
                    await self._drop_store()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.RETRY_MAX)
        finally:
            self.registered.clear()

    async def _step(self) -> None:
        store = self._fresh_store()
        if self.lease_id is not None and self._clock() - self._last_ok >= self.ttl:
            await self._lose(f"not refreshed for {self.ttl}s")
        if self.lease_id is None:
            sent = self._clock()
            lease_id = await store.grant_lease(self.ttl)
            self.lease_id, self._last_ok, self._last_sent_ok, self._attached = lease_id, self._clock(), sent, False
            self.grants += 1
            log.info("%s: granted etcd lease %x (ttl %ds)", self.name, lease_id, self.ttl)
        elif not self._attached:  # after an outage: is our lease still there?
            sent = self._clock()
            if await store.refresh_lease(self.lease_id):
                self._last_ok, self._last_sent_ok = self._clock(), sent
            else:
                await self._lose("it expired or was revoked while etcd was unreachable")
                return
        if not self._attached:
            await self._on_granted(store, self.lease_id)
            self._attached = True
            self.registered.set()
            self._recovered()
        await asyncio.sleep(self.ttl / 3)
        if self.lease_id is None:
            return
        sent = self._clock()
        if await store.refresh_lease(self.lease_id):
            self._last_ok, self._last_sent_ok = self._clock(), sent
            self._recovered()
        else:
            await self._lose("it expired or was revoked")

    async def _lose(self, why: str) -> None:
        log.warning("%s: etcd lease %x is lost (%s); granting a new one", self.name, self.lease_id or 0, why)
        self.lease_id, self._attached = None, False
        self.registered.clear()
        if self._on_lost is not None:
            try:
                result = self._on_lost()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("%s: on_lost callback failed", self.name)

    def _failure(self, exc: BaseException) -> None:
        self._attached = False  # re-attach the keys once etcd answers (they may have been lost)
        if not self._failing:
            self._failing = True
            log.warning("%s: etcd is unreachable (%s: %s); retrying", self.name, type(exc).__name__, exc)

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            log.info("%s: etcd is reachable again; lease %x kept alive", self.name, self.lease_id or 0)

    async def close(self, revoke: bool = True) -> None:
        """Stop refreshing; revoke the lease (its keys disappear at once) unless ``revoke`` is False."""
        self._closed = True
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        if revoke and self.lease_id is not None:
            try:
                store = self._fresh_store()
                await asyncio.wait_for(store.revoke_lease(self.lease_id), 3.0)
            except Exception as exc:
                log.info("%s: could not revoke lease %x (%s); it expires within %ds", self.name,
                         self.lease_id, type(exc).__name__, self.ttl)
        self.lease_id = None
        self.registered.clear()
        await self._drop_store()
