"""The leader election and the control loops on a thread of their own, with their own event loop.

On one event loop, a burst of API requests and heartbeats queues in front of every await of a tick: at 200
agents and 2,000 endpoints a rescale burst stretched ticks to 5–12 s although a tick needs well under a second of
CPU, and the same queue delays the etcd lease refreshes (bench/control_plane). On their own loop, ticks and lease
refreshes only wait for the GIL, which a busy thread hands over every few milliseconds.

The thread has its own :class:`ManagerContext`: its own database engine, etcd client (``store.clone()``) and HTTP
client, since none of them may be shared between event loops; the same manager id, so the election sees one
manager. The only traffic between the threads is :meth:`DutiesThread.poke` (API changes and heartbeats wake the
loops and mark endpoints for republishing), handed over with ``call_soon_threadsafe``.

A store that cannot be cloned (the in-memory store of embedded mode: one process, its app proxy watching on the
main loop) keeps everything on one loop; so does ``[leader] own_thread = false``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid

import aiohttp

from common.aio import cancel_and_wait
from common.signing import SignedClient
from common.store import KVStore
from manager.config import ManagerConfig
from manager.context import ManagerContext
from manager.control.duties import ManagerDuties
from manager.control.leader import Candidate, make_election
from manager.control.publisher import route_key
from manager.db import engine as db_engine

log = logging.getLogger(__name__)
START_TIMEOUT = 30.0  # seconds the app waits for the thread's context (an engine and a client: normally ms)


class DutiesThread:
    def __init__(self, config: ManagerConfig, store: KVStore, manager_id: str, cluster_secret: str,
                 jwt_secret: str) -> None:
        self._config = config
        self._store = store  # a clone, owned (and closed) by the thread
        self._manager_id = manager_id
        self._secrets = (cluster_secret, jwt_secret)
        self._thread = threading.Thread(target=self._main, name="manager-duties", daemon=True)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ctx: ManagerContext | None = None
        self._failure: BaseException | None = None

    async def start(self) -> None:
        self._thread.start()
        if not await asyncio.to_thread(self._ready.wait, START_TIMEOUT):
            raise RuntimeError("the manager-duties thread did not start")
        if self._failure is not None:
            raise RuntimeError("the manager-duties thread failed to start") from self._failure

    def poke(self, *endpoint_ids: uuid.UUID) -> None:
        """Wake the loops and mark endpoints for republishing (from any thread). The thread forgets what it last
        wrote for them: the caller may have written their tables since."""
        if self._loop is None or self._loop.is_closed():
            return
        try:
            self._loop.call_soon_threadsafe(self._poke, endpoint_ids)
        except RuntimeError:  # the loop closed meanwhile (shutdown)
            pass

    def _poke(self, endpoint_ids: tuple[uuid.UUID, ...]) -> None:
        assert self._ctx is not None
        for endpoint_id in endpoint_ids:
            self._ctx.published.pop(route_key(endpoint_id), None)
        self._ctx.poke(*endpoint_ids)

    async def stop(self) -> None:
        """Stop the loops and hand leadership over (the election revokes its lease), then end the thread."""
        if self._loop is not None and self._stopping is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._stopping.set)
            except RuntimeError:
                pass
        await asyncio.to_thread(self._thread.join)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # noqa: BLE001 - reported to start() or logged; the thread must not die silently
            self._failure = exc
            log.exception("the manager-duties thread failed")
        finally:
            self._ready.set()

    async def _run(self) -> None:
        config = self._config
        cluster_secret, jwt_secret = self._secrets
        engine = db_engine.make_engine(config.db.url)
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100, limit_per_host=10))
        try:
            ctx = ManagerContext(config=config, engine=engine, db=db_engine.make_sessionmaker(engine),
                                 store=self._store, http=http, agents=SignedClient(http, cluster_secret),
                                 cluster_secret=cluster_secret, jwt_secret=jwt_secret, manager_id=self._manager_id)
            election = make_election(self._store, Candidate(self._manager_id, config.public_url), config.leader.ttl,
                                     config.leader.step_down_margin)
            self._ctx, self._stopping = ctx, asyncio.Event()
            self._loop = asyncio.get_running_loop()
            self._ready.set()
            duties = asyncio.create_task(ManagerDuties(ctx, election).run(), name="manager-duties")
            await self._stopping.wait()
            await cancel_and_wait(duties)
        finally:
            await http.close()
            await engine.dispose()
            await self._store.close()
