"""The app proxy as an object: ``AppProxy(config, store)``, ``await start()``, ``await stop()``.

No global state and no signal handlers, so the manager's embedded mode (``moorage up``) can run it on its own
event loop next to everything else with a :class:`common.store.MemoryStore`; ``python -m appproxy`` wraps it
with an :class:`common.store.EtcdStore` and signal handling.

Request pipeline (docs/architecture.md, App proxy data path), per request on an endpoint's port:

1. the endpoint's current route table (404 if the endpoint is gone);
2. ``CONNECT``/``TRACE`` → 405; request headers larger than ``max_header_size`` in total → 431;
2½. a CORS pre-flight is answered here from the endpoint's allowed origins (204 or 403, :mod:`appproxy.cors`),
   never forwarded and never read;
3. token check unless the endpoint is public (401, :mod:`appproxy.auth`), whatever the method;
3½. no route in the table: signal demand and hold the request until one appears (scale from zero,
   :mod:`appproxy.hold`; bounded by ``hold_timeout``/``hold_max_requests`` → 503 + ``Retry-After``);
4. admission: at most ``max_concurrency_per_endpoint`` requests in flight → else 503 + ``Retry-After``;
5. the body, up to ``max_body_size`` → else 413: buffered up to ``retry_buffer_size``, streamed beyond, all
   within the process-wide ``max_buffered_body_bytes`` → else 503 + ``Retry-After`` (:mod:`appproxy.body`);
6. route choice, forwarding, retries before the first byte, streaming (:mod:`appproxy.forward`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any, Self

from aiohttp import web

from appproxy.admin import AdminServer
from appproxy.auth import TokenCache, authenticate
from appproxy.body import BodyBudget, take_body
from appproxy.config import ProxyConfig
from appproxy.cors import CorsGrant, answer_preflight, is_cors_preflight
from appproxy.errors import (
    EndpointNotFound,
    EndpointOverloaded,
    MethodNotAllowed,
    PreflightRefused,
    RequestHeadersTooLarge,
)
from appproxy.fastpath import FastPath
from appproxy.forward import STATUS_CLIENT_CLOSED, Forwarder, Resumed
from appproxy.frontend import make_frontend
from appproxy.gateway.listener import Gateway
from appproxy.gateway.meter import Sink
from appproxy.hold import HoldGate
from appproxy.httpserver import SizedResponse
from appproxy.metrics import NO_ROUTE, ProxyMetrics, make_registry
from appproxy.registration import Registration, admin_url, default_proxy_id, registration_info
from appproxy.routing import RouteCache
from appproxy.scrape import ReplicaScraper
from common.errors import ProblemError
from common.protocol import RouteTable
from common.store import ROUTES_PREFIX, KVStore

log = logging.getLogger(__name__)

REFUSED_METHODS = frozenset({"CONNECT", "TRACE"})


def tune_gc() -> None:
    """Standalone process only (never in embedded mode: it is process-wide). Thousands of long streams keep
    hundreds of thousands of objects alive; CPython's default thresholds then run full collections that stall
    the event loop for hundreds of milliseconds (measured: 8 s of GC in 90 s with 5,000 streams). Objects from
    start-up are frozen out of collection and the young generation is collected 70× less often; reference
    counting still frees almost everything, the collector only has to find cycles."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def header_bytes(request: web.BaseRequest) -> int:
    """Size of the request headers as received (name, value, ": " and CRLF per line)."""
    return raw_header_bytes(request.raw_headers)


def raw_header_bytes(raw: tuple[tuple[bytes, bytes], ...]) -> int:
    return sum(len(name) + len(value) for name, value in raw) + 4 * len(raw)


class AppProxy:
    def __init__(self, config: ProxyConfig, store: KVStore, *, rng: random.Random | None = None,
                 routes_prefix: str = ROUTES_PREFIX, worker_index: int = 0, reuse_port: bool = False,
                 lease_store_factory: Callable[[], Any] | None = None, usage_sink: Sink | None = None) -> None:
        """``worker_index``/``reuse_port``: set by ``python -m appproxy --workers N`` (worker k of N shares the
        proxy ports with its siblings and serves its admin listener on ``admin_port + k``).
        ``lease_store_factory``: fresh etcd stores for the registration's lease (:mod:`appproxy.registration`);
        default: ``store.clone`` when the store has leases, else a plain key deleted on stop.
        ``usage_sink``: where the gateway's usage records go (:mod:`appproxy.gateway.meter`)."""
        self.config = config
        self._secret = config.jwt_secret()  # fail at construction, not at the first request
        cluster_secret = config.cluster_secret()  # likewise; None when there is no admin listener
        ssl_context = config.server_ssl_context()  # likewise: HTTPS on every listener when set
        self._store = store
        self.metrics = ProxyMetrics()
        self.registry = make_registry(self.metrics)  # this proxy's own; never the global registry
        self.routes = RouteCache(store, routes_prefix, on_change=self._routes_changed)
        self.forwarder = Forwarder(config.proxy, config.outlier, self.metrics, rng=rng)
        self.fastpath = FastPath(self)
        self.frontend = make_frontend(config.proxy, self.routes, self.handle, reuse_port=reuse_port,
                                      fast=self.fastpath.take, ssl_context=ssl_context)
        self.scraper = ReplicaScraper(config.proxy, self.routes, self.forwarder, self.metrics)
        self.admin: AdminServer | None = None
        cfg = config.proxy
        self.bodies = BodyBudget(cfg.max_buffered_body_bytes)  # request body bytes held in this process
        self._worker_index, self._reuse_port = worker_index, reuse_port
        if lease_store_factory is None and hasattr(store, "grant_lease") and hasattr(store, "clone"):
            lease_store_factory = store.clone
        self._lease_store_factory = lease_store_factory
        self.registration: Registration | None = None
        proxy_id = default_proxy_id(cfg.proxy_id, cfg.admin_port, worker_index, reuse_port)
        self.hold = HoldGate(cfg, self.routes, store, proxy_id, metrics=self.metrics)
        # the OpenAI-compatible gateway on its own port (docs/gateway.md), when [gateway] port is set
        self.gateway: Gateway | None = None
        if config.gateway.port is not None:
            self.gateway = Gateway(config, store, self.routes, self.forwarder, self.metrics, reuse_port=reuse_port,
                                   ssl_context=ssl_context, usage_sink=usage_sink, bodies=self.bodies,
                                   hold=self.hold)
            self.scraper.queue_stats = self.gateway.queue_stats  # the autoscaler's queue_length / queue_wait
        if cfg.admin_port is not None and cluster_secret is not None:
            self.admin = AdminServer(
                cfg.admin_host, cfg.admin_port + worker_index if cfg.admin_port else 0, cluster_secret,
                self.registry, self.scraper, known=lambda e: self.routes.get(e) is not None,
                in_flight=lambda e: self.metrics.in_flight.get(e, 0), ssl_context=ssl_context)
        self._admitted: Counter[str] = Counter()  # endpoint → requests admitted and not finished
        self._tokens = TokenCache()
        self._names: dict[uuid.UUID, str] = {}  # endpoint id → str(id), the metrics label (UUID.__str__ is slow)
        self._started = False

    # -- lifecycle -------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the upstream pool, start watching route tables and open the endpoints' ports.

        Waits up to ``initial_sync_timeout`` for the first route snapshot so that the ports of existing endpoints
        are open when this returns; if the store is unreachable it returns anyway and converges later.
        """
        if self._started:
            return
        self._started = True
        try:
            await self.forwarder.start()
            await self.frontend.start()
            self.routes.start()
            if not await self.routes.wait_ready(self.config.proxy.initial_sync_timeout):
                log.warning("no route tables received within %.1fs; serving none until the store answers",
                            self.config.proxy.initial_sync_timeout)
            await self.frontend.sync()
            if self.gateway is not None:
                await self.gateway.start()
            if self.admin is not None:
                await self.scraper.start()
                await self.admin.start()
                await self._register()
        except BaseException:
            await self.stop()
            raise
        log.info("app proxy started: %d endpoint(s), %s frontend over %s%s%s", len(self.routes.tables),
                 self.config.proxy.frontend, "HTTPS" if self.config.proxy.tls_cert_file else "plain HTTP",
                 f", ports {sorted(self.frontend.ports)}" if self.config.proxy.frontend == "port" else "",
                 f", admin on {self.config.proxy.admin_host}:{self.admin.port}" if self.admin else "")
        if self.gateway is not None:
            log.info("gateway: %s", self.gateway.url)

    async def stop(self) -> None:
        """Stop watching, close the ports (in-flight requests get ``shutdown_timeout``), close the pool.

        Idempotent. The store is not closed: it belongs to the caller.
        """
        if not self._started:
            return
        self._started = False
        if self.registration is not None:
            await self.registration.stop()
            self.registration = None
        await self.hold.close()
        if self.admin is not None:
            await self.admin.stop()
        await self.scraper.stop()
        if self.gateway is not None:
            await self.gateway.stop()
        await self.routes.stop()
        await self.frontend.stop()
        await self.forwarder.close()
        log.info("app proxy stopped")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _register(self) -> None:
        assert self.admin is not None and self.admin.port is not None
        cfg = self.config.proxy
        proxy_id = default_proxy_id(cfg.proxy_id, self.admin.port, self._worker_index, self._reuse_port)
        self.hold.proxy_id = proxy_id
        url = admin_url(cfg.admin_advertise_host, cfg.admin_host, self.admin.port,
                        tls=self.admin.ssl_context is not None)
        self.registration = Registration(self._store, registration_info(proxy_id, url, self._worker_index),
                                         ttl=cfg.registration_ttl, lease_store_factory=self._lease_store_factory)
        await self.registration.start()

    def _routes_changed(self) -> None:
        self.hold.routes_changed()
        if self.gateway is not None:
            self.gateway.routes_changed()  # new replicas take queued requests at once
        self.frontend.changed()
        self.forwarder.retain(self.routes.tables.values())
        self.metrics.forget([str(e) for e in self.routes.tables])
        self._names = {e: n for e, n in self._names.items() if e in self.routes.tables}

    # -- the request pipeline --------------------------------------------------------------------------------
    async def handle(self, request: web.BaseRequest, endpoint_id: uuid.UUID) -> web.StreamResponse | SizedResponse:
        endpoint = self.endpoint_name(endpoint_id)
        started = asyncio.get_running_loop().time()
        self.metrics.request_started(endpoint)
        return await self.respond(endpoint, started, self._pipeline(request, endpoint_id, endpoint))

    def endpoint_name(self, endpoint_id: uuid.UUID) -> str:
        endpoint = self._names.get(endpoint_id)
        if endpoint is None:
            endpoint = self._names[endpoint_id] = str(endpoint_id)
        return endpoint

    async def respond(self, endpoint: str, started: float,
                      pipeline: Coroutine[Any, Any, tuple[web.StreamResponse | SizedResponse, str]]
                      ) -> web.StreamResponse | SizedResponse:
        """Run the rest of a request's pipeline (counted as started at ``started``): problem documents for
        :class:`ProblemError`, metrics for every outcome, a client disconnect counted as such."""
        status, route = 500, NO_ROUTE
        try:
            response, route = await pipeline
            status = response.status
            return response
        except ProblemError as exc:
            status = exc.status
            self.metrics.rejections[(endpoint, exc.slug)] += 1
            return exc.to_response()
        except asyncio.CancelledError:
            status = STATUS_CLIENT_CLOSED
            self.metrics.client_disconnects[endpoint] += 1
            raise
        finally:
            self.metrics.request_finished(endpoint, route, status, asyncio.get_running_loop().time() - started)

    async def _pipeline(self, request: web.BaseRequest, endpoint_id: uuid.UUID, endpoint: str
                        ) -> tuple[web.StreamResponse | SizedResponse, str]:
        table = self.routes.get(endpoint_id)
        if table is None:
            raise EndpointNotFound("This endpoint no longer exists.")
        policy = self.forwarder.plan(table).cors
        if policy is None:
            return await self._checked(request, endpoint_id, endpoint, table, None)
        cors = policy.grant(request.headers.get("Origin"))
        try:
            return await self._checked(request, endpoint_id, endpoint, table, cors)
        except ProblemError as exc:  # the proxy's own answers carry them too: a page can read its 401 or 503
            if not isinstance(exc, PreflightRefused):
                exc.headers = {**exc.headers, **dict(cors.pairs)}
            raise

    async def _checked(self, request: web.BaseRequest, endpoint_id: uuid.UUID, endpoint: str, table: RouteTable,
                       cors: CorsGrant | None) -> tuple[web.StreamResponse | SizedResponse, str]:
        method = request.method
        if method in REFUSED_METHODS:
            raise MethodNotAllowed(f"{method} is not proxied.")
        cfg = self.config.proxy
        if (size := header_bytes(request)) > cfg.max_header_size:
            raise RequestHeadersTooLarge(f"The request headers ({size} bytes) exceed the limit of "
                                         f"{cfg.max_header_size} bytes.")
        if method == "OPTIONS" and is_cors_preflight(method, request.headers):
            response = answer_preflight(self.forwarder.plan(table).cors, request.headers, cfg.cors_max_age)
            if request.body_exists:
                response.force_close()  # its body is never read (nor drained)
            return response, NO_ROUTE
        authenticate(self._secret, table, request.headers, self._tokens)
        if not table.routes:
            table = await self.hold.wait_for_route(endpoint_id, table)
        if self._admitted[endpoint] >= cfg.max_concurrency_per_endpoint:
            raise EndpointOverloaded(f"This endpoint already has {cfg.max_concurrency_per_endpoint} requests in "
                                     f"progress; try again shortly.", retry_after=cfg.retry_after)
        self.admit(endpoint)
        taken = 0
        try:
            body, taken = await take_body(request, cfg, self.bodies)
            # the table may have changed while the body was uploading: use the newest one
            table = self.routes.get(endpoint_id) or table
            return await self.forwarder.forward(request, table, body, cors=cors)
        finally:
            self.bodies.give_back(taken)
            self.release(endpoint)

    async def resumed(self, request: web.BaseRequest, endpoint: str, table: RouteTable, body: bytes,
                      attempt: Resumed, cors: CorsGrant | None = None
                      ) -> tuple[web.StreamResponse | SizedResponse, str]:
        """The end of :meth:`_pipeline` for a request the fast path admitted and started forwarding."""
        try:
            return await self.forwarder.forward(request, table, body, attempt, cors)
        finally:
            self.bodies.give_back(len(body))  # taken by the fast path
            self.release(endpoint)

    # -- admission (at most max_concurrency_per_endpoint requests past the checks per endpoint) ---------------
    def admit(self, endpoint: str) -> None:
        self._admitted[endpoint] += 1

    def release(self, endpoint: str) -> None:
        admitted = self._admitted
        if admitted[endpoint] <= 1:
            del admitted[endpoint]
        else:
            admitted[endpoint] -= 1
