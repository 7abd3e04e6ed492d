"""The gateway listener: one port serving ``GET /v1/models`` and ``POST /v1/chat/completions``,
``/v1/completions``, ``/v1/embeddings`` for every model a key may use (docs/gateway.md).

Stages of one request: authenticate the key (:mod:`.keys`) → read and validate the body (:mod:`.request`,
400 naming the field) → find the model's pool (:mod:`.catalog`, 404 alike for unknown and not allowed) →
admit (the key's max_parallel in this process, then rpm/tpm in :mod:`.limiter`, 429 + Retry-After; then a slot of
the model's routes, waiting in the priority queue of :mod:`.queue` when they are all busy) → relay with
the app proxy's forwarder (same balancer, retries, outlier ejection and streaming as the endpoint URLs) while
:mod:`.usage` reads the usage → correct the token reservation to the real usage. Every answer after the key
check carries the ``x-ratelimit-*`` headers of the key's limits.
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from appproxy.body import BodyBudget, continue_100, read_chunk
from appproxy.config import ProxyConfig
from appproxy.cors import CorsGrant
from appproxy.errors import RequestBodyTimeout
from appproxy.forward import Forwarder
from appproxy.frontend import make_server
from appproxy.gateway.catalog import engine_model, pool_of, pool_table, visible_models
from appproxy.gateway.errors import OpenAIError, bad_request, model_not_found
from appproxy.gateway.keys import KeyCache
from appproxy.gateway.limiter import Limiter, LimiterUnavailable, MemoryLimiter, RedisLimiter
from appproxy.gateway.limits import Decision, Limits, Refusal
from appproxy.gateway.limits import headers as limit_headers
from appproxy.gateway.meter import Sink, UsageMeter, http_sink
from appproxy.gateway.queue import PoolQueue, QueueOutcome, QueueRefused, pool_capacity
from appproxy.gateway.request import PATHS, GatewayRequest, parse_request, reservation, upstream_body
from appproxy.gateway.usage import UsageTap
from appproxy.hold import HoldGate
from appproxy.httpserver import HttpServer, SizedResponse
from appproxy.metrics import ProxyMetrics, status_class
from appproxy.routing import RouteCache
from common.apikeys import ApiKeyRecord, over_budget
from common.errors import ProblemError
from common.protocol import RouteTable
from common.store import KVStore
from common.usage import UsageRecord

log = logging.getLogger(__name__)

# Headers of the client's request the replica never sees (besides what appproxy.forward drops): the key.
DROP_HEADERS = frozenset({"x-api-key"})


def _seconds_to_next_month(now: float | None = None) -> int:
    at = time.gmtime(time.time() if now is None else now)
    year, month = (at.tm_year + 1, 1) if at.tm_mon == 12 else (at.tm_year, at.tm_mon + 1)
    return max(1, int(calendar.timegm((year, month, 1, 0, 0, 0)) - (time.time() if now is None else now)))


class Gateway:
    def __init__(self, config: ProxyConfig, store: KVStore, routes: RouteCache, forwarder: Forwarder,
                 metrics: ProxyMetrics, *, reuse_port: bool = False, ssl_context: Any = None,
                 usage_sink: Sink | None = None, bodies: BodyBudget | None = None,
                 hold: HoldGate | None = None) -> None:
        """``usage_sink``: where usage records go (embedded mode: the manager's database directly); default: the
        manager at ``[gateway] manager_url``, else nowhere. ``bodies``: the proxy's process-wide budget of request
        body bytes, shared with the endpoint ports. ``hold``: the proxy's scale-from-zero gate: a request for a
        model none of whose endpoints has a route waits for one (demand signalled) like one on an endpoint port."""
        self.hold = hold
        self.bodies = bodies if bodies is not None else BodyBudget(config.proxy.max_buffered_body_bytes)
        self.config = config.gateway
        self._sync_timeout = config.proxy.initial_sync_timeout
        self._proxy_cfg = config.proxy
        self.keys = KeyCache(store)
        self.routes = routes
        self.forwarder = forwarder
        self.metrics = metrics
        self._reuse_port = reuse_port
        self._ssl_context = ssl_context
        self.limiter: Limiter = MemoryLimiter()
        self._server: HttpServer | None = None
        self.port: int | None = None
        self._in_flight = 0
        self._per_key: Counter[uuid.UUID] = Counter()  # requests in flight per key (max_parallel, this process)
        self._pools: dict[tuple[str, tuple[uuid.UUID, ...]], RouteTable] = {}
        self._pools_version = -1
        self.queues: dict[tuple[str, tuple[uuid.UUID, ...]], PoolQueue] = {}  # per pool, like self._pools
        self.endpoint_queued: Counter[str] = Counter()  # endpoint id → gateway requests queued for its pools
        self._close_sink: Callable[[], Awaitable[None]] | None = None
        cfg = self.config
        if usage_sink is None and cfg.manager_url:
            secret = config.cluster_secret()
            assert secret is not None  # required by config.cluster_secret() when manager_url is set
            usage_sink, self._close_sink = http_sink(cfg.manager_url, secret, timeout=10.0)
        self.meter = UsageMeter(usage_sink, interval=cfg.usage_flush_interval, limit=cfg.usage_buffer_limit,
                                close_timeout=cfg.usage_close_timeout)
        if usage_sink is None:
            log.warning("gateway usage is not recorded: set [gateway] manager_url")

    @property
    def url(self) -> str:
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{self.config.host}:{self.port}/v1"

    async def start(self) -> None:
        cfg = self.config
        if cfg.redis_url:
            self.limiter = RedisLimiter(cfg.redis_url, prefix=cfg.redis_key_prefix, timeout=cfg.redis_timeout,
                                        fail_open=cfg.fail_open)
        self.keys.start()
        self.meter.start()
        try:
            await asyncio.wait_for(self.keys.ready.wait(), self._sync_timeout)
        except TimeoutError:
            log.warning("no API keys received within %.1fs; refusing every key until the store answers",
                        self._sync_timeout)
        # the endpoint ports' HTTP server: same parser limits, head and keep-alive timeouts, per-client caps
        self._server = make_server(self._proxy_cfg, self.handle, None, self._ssl_context)
        assert cfg.port is not None  # the gateway exists only when [gateway] port is set
        listener = await self._server.listen(cfg.host, cfg.port, reuse_port=self._reuse_port)
        self.port = listener.port
        log.info("gateway listening on %s", self.url)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown(self._proxy_cfg.shutdown_timeout)
        await self.keys.stop()
        await self.limiter.close()
        await self.meter.close()  # after the last request: its record is in the buffer
        if self._close_sink is not None:
            await self._close_sink()

    # -- the request -----------------------------------------------------------------------------------------
    async def handle(self, request: web.BaseRequest) -> web.StreamResponse | SizedResponse:
        status, model = 500, [""]  # the model, once the body named a valid one (the metrics label)
        try:
            response = await self._handle(request, model)
            status = response.status
            return response
        except OpenAIError as exc:
            status = exc.status
            return exc.to_response()
        except ProblemError as exc:  # the forwarder's own answers (502, 503, 504) in the gateway's format
            status = exc.status
            return OpenAIError(exc.status, exc.detail, type="server_error" if exc.status >= 500 else
                               "invalid_request_error", code=exc.slug, headers=exc.headers).to_response()
        except asyncio.CancelledError:
            status = 499
            raise
        finally:
            self.metrics.gateway_requests[(model[0], status_class(status))] += 1

    async def _handle(self, request: web.BaseRequest, model: list[str]) -> web.StreamResponse | SizedResponse:
        path = request.path
        if path == "/v1/models" or path.startswith("/v1/models/"):
            if request.method != "GET":
                raise OpenAIError(405, f"{request.method} is not allowed on {path}.", code="method_not_allowed")
            record = self.keys.authenticate(request.headers)
            return self._models(record, path)
        kind = PATHS.get(path)
        if kind is None:
            raise OpenAIError(404, f"Unknown path {path[:200]}; the gateway serves /v1/models, "
                                   f"/v1/chat/completions, /v1/completions and /v1/embeddings.", code="unknown_url")
        if request.method != "POST":
            raise OpenAIError(405, f"{request.method} is not allowed on {path}; use POST.", code="method_not_allowed")
        record = self.keys.authenticate(request.headers)
        raw, taken = await self._read_body(request)
        try:
            cfg = self.config
            parsed = parse_request(kind, raw, max_tokens_limit=cfg.max_tokens_limit, max_n=cfg.max_n)
            members = pool_of(record, parsed.model, self.routes.tables.values())
            if not members:
                raise model_not_found(parsed.model)
            model[0] = parsed.model
            if self.hold is not None and not any(t.routes for t in members):  # at zero replicas: wake one
                await self.hold.wait_for_route(members[0].endpoint_id, members[0])
                members = pool_of(record, parsed.model, self.routes.tables.values()) or members
            return await self._admitted(request, record, parsed, raw, members)
        finally:
            self.bodies.give_back(taken)

    def _models(self, record: ApiKeyRecord, path: str) -> web.Response:
        names = visible_models(record, self.routes.tables.values())
        entries = [{"id": n, "object": "model", "created": 0, "owned_by": "moorage"} for n in names]
        if path == "/v1/models":
            return web.json_response({"object": "list", "data": entries})
        wanted = path[len("/v1/models/"):]
        for entry in entries:
            if entry["id"] == wanted:
                return web.json_response(entry)
        raise model_not_found(wanted)

    async def _read_body(self, request: web.BaseRequest) -> tuple[bytes, int]:
        """The whole body (at most ``max_body_size``, within the proxy's process-wide body budget) and the budget
        bytes taken for it, which the caller gives back when the request is over."""
        limit = self.config.max_body_size
        length = request.content_length
        if length is not None and length > limit:
            raise bad_request(f"The request body ({length} bytes) exceeds the limit of {limit} bytes.", None,
                              "request_too_large")
        taken = 0
        try:
            if length is not None:
                taken = self._take(length)
            await continue_100(request)
            chunks: list[bytes] = []
            size = 0
            while chunk := await read_chunk(request, self.config.request_body_timeout):
                size += len(chunk)
                if size > limit:
                    raise bad_request(f"The request body exceeds the limit of {limit} bytes.", None,
                                      "request_too_large")
                if length is None:
                    taken += self._take(len(chunk))
                chunks.append(chunk)
            return b"".join(chunks), taken
        except RequestBodyTimeout:
            self.bodies.give_back(taken)
            raise OpenAIError(408, "The request body did not arrive in time.", code="request_timeout") from None
        except BaseException:
            self.bodies.give_back(taken)
            raise

    def _take(self, size: int) -> int:
        if not self.bodies.take(size):
            raise OpenAIError(503, "The gateway is holding as many request bodies as it may; retry shortly.",
                              type="server_error", code="overloaded",
                              headers={"Retry-After": str(self._proxy_cfg.retry_after)})
        return size

    def _pool(self, model: str, members: list[RouteTable]) -> RouteTable:
        if self._pools_version != self.routes.version:  # tables changed: rebuild pools as they are asked for
            self._pools, self._pools_version = {}, self.routes.version
            self.queues = {k: q for k, q in self.queues.items() if not q.idle}
        ids = tuple(t.endpoint_id for t in members)
        table = self._pools.get((model, ids))
        if table is None:
            table = self._pools[(model, ids)] = pool_table(model, members)
        return table

    async def _admitted(self, request: web.BaseRequest, record: ApiKeyRecord, parsed: GatewayRequest, raw: bytes,
                        members: list[RouteTable]) -> web.StreamResponse | SizedResponse:
        cfg = self.config
        if self._in_flight >= cfg.max_concurrency:
            raise OpenAIError(503, "The gateway is at capacity; retry shortly.", type="server_error",
                              code="overloaded", headers={"Retry-After": str(self._proxy_cfg.retry_after)})
        if over_budget(record, time.time()):
            raise OpenAIError(429, f"This API key has spent {record.spent:.4f} of its monthly budget of "
                                   f"{record.budget:g} (budget, calendar month UTC); it is refused until the month "
                                   f"ends or an admin raises the budget.", type="insufficient_quota",
                              code="budget_exceeded", headers={"Retry-After": str(_seconds_to_next_month())})
        limits = Limits(record.rpm, record.tpm)
        if record.max_parallel is not None and self._per_key[record.key_id] >= record.max_parallel:
            raise OpenAIError(429, f"This key already has {record.max_parallel} requests in progress "
                                   f"(max_parallel); retry when one ends.", type="rate_limit_exceeded",
                              code="max_parallel_exceeded", headers={"Retry-After": "1"})
        reserve = reservation(parsed, cfg.default_max_tokens)
        request_id = uuid.uuid4().hex
        key_id = str(record.key_id)
        decision: Decision | None = None
        if limits.any:
            try:
                decision = await self.limiter.admit(key_id, limits, reserve, request_id)
            except LimiterUnavailable:
                raise OpenAIError(503, "Rate limits cannot be checked right now; retry shortly.",
                                  type="server_error", code="rate_limiter_unavailable",
                                  headers={"Retry-After": str(self._proxy_cfg.retry_after)}) from None
            finally:
                self.metrics.gateway_ratelimit_errors[""] = self.limiter.errors
        extra = limit_headers(limits, decision) if decision is not None else {}
        if decision is not None and not decision.admitted:
            self.metrics.gateway_rate_limited[str(decision.refused)] += 1
            raise self._refusal(limits, decision, reserve, extra)
        queue = self._queue(parsed.model, members)
        try:
            waited = await queue.acquire(record.priority, timeout=cfg.queue_timeout, max_length=cfg.queue_max_length)
        except BaseException as exc:  # refused, or the client left while queued: nothing ran, give the tokens back
            if decision is not None and limits.tpm is not None:
                await self.limiter.correct(key_id, request_id, 0)
            if isinstance(exc, QueueRefused):
                raise self._queue_refusal(queue, exc, extra) from None
            raise
        self.metrics.queue_waited(parsed.model, waited)
        self._in_flight += 1
        self._per_key[record.key_id] += 1
        tap = UsageTap(strip_usage_chunk=parsed.stream and not parsed.wants_usage)
        started, at = asyncio.get_running_loop().time(), time.time()
        route, status = "", 500
        try:
            body = upstream_body(parsed, raw, engine_model(parsed.model, members))
            table = self._pool(parsed.model, members)
            clean = request if "X-API-Key" not in request.headers else request.clone(  # a clone costs: only then
                headers=[(k, v) for k, v in request.headers.items() if k.lower() not in DROP_HEADERS])
            grant = CorsGrant(b"".join(f"{k}: {v}\r\n".encode() for k, v in extra.items()), tuple(extra.items()))
            try:
                response, route = await self.forwarder.forward(clean, table, body, cors=grant, tap=tap)
            except ProblemError as exc:
                status = exc.status
                exc.headers = {**extra, **exc.headers}
                raise
            except asyncio.CancelledError:  # the client left: the record says so (nginx's 499)
                status = 499
                raise
            status = response.status
            return response
        finally:
            queue.release()
            self._in_flight -= 1
            if self._per_key[record.key_id] <= 1:
                del self._per_key[record.key_id]
            else:
                self._per_key[record.key_id] -= 1
            prompt, completion, estimated = self._used_tokens(parsed, tap)
            if decision is not None and limits.tpm is not None and prompt + completion != reserve:
                self.limiter.defer_correct(key_id, request_id, prompt + completion)  # off the answer's path
            ended = asyncio.get_running_loop().time()
            endpoint_id = self._endpoint_of(members, route)
            if endpoint_id is not None:
                self.metrics.tokens_counted(str(endpoint_id), prompt, completion)
            self.meter.add(UsageRecord(
                request_id=request_id, at=at, key_id=record.key_id, user_id=record.owner_id,
                model=self._service_name(members, route, parsed.model),
                endpoint_id=endpoint_id, route_id=uuid.UUID(route) if route else None,
                prompt_tokens=prompt, completion_tokens=completion, estimated=estimated, status=status,
                ttft_ms=(tap.first_byte_at - started) * 1000 if tap.first_byte_at is not None else None,
                duration_ms=(ended - started) * 1000))
            self.metrics.gateway_usage_dropped[""] = self.meter.dropped

    # -- the priority queue ----------------------------------------------------------------------------------
    def _queue(self, model: str, members: list[RouteTable]) -> PoolQueue:
        """The pool's queue (its capacity is set when made, then on every route change: :meth:`routes_changed`)."""
        ids = tuple(t.endpoint_id for t in members)
        queue = self.queues.get((model, ids))
        if queue is None:
            queue = self.queues[(model, ids)] = PoolQueue(model, ids, on_length=self._queue_length)
            queue.set_capacity(pool_capacity(((len(t.routes), t.route_capacity) for t in members),
                                             self.config.default_route_capacity))
        return queue

    def routes_changed(self) -> None:
        """Bring every queue's capacity up to date (a replica added serves waiting requests at once)."""
        for queue in list(self.queues.values()):
            tables = [self.routes.get(e) for e in queue.endpoints]
            queue.set_capacity(pool_capacity(((len(t.routes), t.route_capacity) for t in tables if t is not None),
                                             self.config.default_route_capacity))

    def _queue_length(self, queue: PoolQueue, delta: int) -> None:
        for key, counter in [(queue.model, self.metrics.gateway_queued),
                             *((str(e), self.endpoint_queued) for e in queue.endpoints)]:
            value = counter[key] + delta
            if value > 0:
                counter[key] = value
            else:
                counter.pop(key, None)

    def queue_stats(self, endpoint_id: uuid.UUID) -> tuple[int, float]:
        """(requests queued, seconds the oldest has waited) over the pools this endpoint belongs to: what the
        admin port reports to the autoscaler (``proxy`` source, ``queue_length`` / ``queue_wait``)."""
        queued = self.endpoint_queued.get(str(endpoint_id), 0)
        if not queued:
            return 0, 0.0
        return queued, max((q.oldest_wait() for q in self.queues.values() if endpoint_id in q.endpoints),
                           default=0.0)

    def _queue_refusal(self, queue: PoolQueue, exc: QueueRefused, extra: dict[str, str]) -> OpenAIError:
        self.metrics.gateway_queue_refused[(queue.model, exc.outcome.value)] += 1
        retry = str(self._proxy_cfg.retry_after)
        if exc.outcome is QueueOutcome.FULL:
            message = (f"Every replica of model `{queue.model}` is busy and {len(queue.waiting)} requests are "
                       f"already waiting (the queue is full); retry in {retry}s.")
        else:
            message = (f"Every replica of model `{queue.model}` stayed busy while this request waited "
                       f"{exc.waited:.1f}s (queue_timeout); retry in {retry}s.")
        return OpenAIError(503, message, type="server_error", code=f"queue_{exc.outcome.value}",
                           headers={**extra, "Retry-After": retry})

    @staticmethod
    def _service_name(members: list[RouteTable], route: str, model: str) -> str:
        """The name of the service that served the request (usage and prices are by service name, whichever alias
        the client used); the requested model when no route was reached."""
        for table in members:
            if any(str(r.route_id) == route for r in table.routes):
                return table.name
        return members[0].name if len({t.name for t in members}) == 1 else model

    @staticmethod
    def _endpoint_of(members: list[RouteTable], route: str) -> uuid.UUID | None:
        for table in members:
            if any(str(r.route_id) == route for r in table.routes):
                return table.endpoint_id
        return None

    @staticmethod
    def _used_tokens(parsed: GatewayRequest, tap: UsageTap) -> tuple[int, int, bool]:
        """(prompt, completion, estimated): the replica's usage, else the prompt estimate and the content chunks
        seen (about one token each; a client gone mid-stream is charged what was produced until then)."""
        if tap.usage is not None:
            return tap.usage[0], tap.usage[1], False
        return parsed.prompt_estimate, tap.chunks, True

    @staticmethod
    def _refusal(limits: Limits, decision: Decision, reserve: int, extra: dict[str, str]) -> OpenAIError:
        retry = max(1, math.ceil(decision.retry_after))
        if decision.refused is Refusal.REQUESTS:
            message = (f"Rate limit reached for requests per minute (rpm): limit {limits.rpm}, used "
                       f"{decision.requests}. Retry in {retry}s.")
        elif limits.tpm is not None and reserve > limits.tpm:
            message = (f"Request too large for tokens per minute (tpm): limit {limits.tpm}, this request reserves "
                       f"{reserve} (prompt estimate + max_tokens). Lower max_tokens or the prompt.")
        else:
            message = (f"Rate limit reached for tokens per minute (tpm): limit {limits.tpm}, used "
                       f"{decision.tokens}, requested {reserve}. Retry in {retry}s.")
        return OpenAIError(429, message, type="rate_limit_exceeded", param=None,
                           code=f"rate_limit_{decision.refused}",
                           headers={**extra, "Retry-After": str(retry)})
