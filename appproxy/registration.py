"""The proxy's registration: ``PROXIES_PREFIX + <proxy_id>`` → :class:`common.protocol.ProxyRegistration`.

The manager lists that prefix to find every proxy worker's admin API and reads per-endpoint metrics from each
(proxy and inference_framework autoscaling rules). With etcd (``lease_store_factory`` given, as
``python -m appproxy`` does) the key is attached to a lease of ``registration_ttl`` seconds kept alive by
:class:`common.lease.LeaseKeeper`: a proxy that dies is forgotten within the TTL, and the key comes back by
itself after an etcd outage. Without one (embedded mode, tests) the key is written once and deleted on stop.
Only a proxy with an admin listener registers (without it there is nothing for the manager to read).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from common.aio import cancel_and_wait
from common.lease import LeaseKeeper
from common.protocol import PROXIES_PREFIX, ProxyRegistration
from common.store import KVStore

log = logging.getLogger(__name__)
_ANY_ADDRESS = frozenset({"", "0.0.0.0", "::", "[::]"})


def default_proxy_id(configured: str | None, admin_port: int | None, worker_index: int, workers: bool) -> str:
    """``configured`` (plus ``-w<k>`` for worker k of several), else ``<hostname>-<admin port>``."""
    if configured:
        return f"{configured}-w{worker_index}" if workers else configured
    host = "".join(c if c.isalnum() or c in "._-" else "-" for c in socket.gethostname()) or "proxy"
    return f"{host[:80]}-{admin_port or 0}"


def admin_url(advertise_host: str | None, admin_host: str, port: int, tls: bool = False) -> str:
    """What the manager calls: ``https://`` when the admin listener serves TLS."""
    host = advertise_host or admin_host
    if host in _ANY_ADDRESS:
        host = socket.getfqdn()  # bound to every address: the manager needs a name; set admin_advertise_host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"


class Registration:
    def __init__(self, store: KVStore, info: ProxyRegistration, *, ttl: int,
                 lease_store_factory: Callable[[], Any] | None = None) -> None:
        self._store = store
        self.info = info
        self.key = PROXIES_PREFIX + info.proxy_id
        self._ttl = ttl
        self._factory = lease_store_factory
        self.keeper: LeaseKeeper | None = None
        self._task: asyncio.Task[None] | None = None

    async def _attach(self, store: Any, lease_id: int) -> None:
        await store.put_with_lease(self.key, self.info.model_dump_json(), lease_id)
        log.info("registered as %s (admin %s, lease %x)", self.key, self.info.admin_url, lease_id)

    async def start(self) -> None:
        if self._factory is not None:
            self.keeper = LeaseKeeper(self._factory, self._ttl, self._attach, name=f"app proxy {self.info.proxy_id}")
            self._task = asyncio.create_task(self.keeper.run(), name="appproxy-registration")
            return
        try:
            await self._store.put(self.key, self.info.model_dump_json())
        except Exception as exc:  # not fatal: the proxy serves; the manager just cannot read its metrics
            log.warning("cannot register under %s: %s: %s", self.key, type(exc).__name__, exc)

    async def stop(self) -> None:
        if self.keeper is not None:
            await self.keeper.close(revoke=True)  # a clean stop deregisters at once
            await cancel_and_wait(self._task)
            self.keeper, self._task = None, None
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._store.delete(self.key), 3.0)


def registration_info(proxy_id: str, url: str, worker_index: int) -> ProxyRegistration:
    return ProxyRegistration(proxy_id=proxy_id, admin_url=url, worker_index=worker_index, started_at=time.time())


__all__ = ["Registration", "admin_url", "default_proxy_id", "registration_info"]
