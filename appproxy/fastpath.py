"""The fast path: the common request answered from ``data_received`` callbacks, without a task.

Most requests are a complete small request (no body, or a body already received) for an endpoint with a ready
route and an idle pooled connection to it, answered with a small body of known length. For those, everything
:meth:`appproxy.server.AppProxy.handle` does is done synchronously when the request is parsed — the same checks
(any that fails leaves the request to the ordinary path untouched) and the same counters — then the request goes
to the replica (:meth:`UpstreamPool.send`) and the answer is written from the replica connection's
``data_received`` as a :class:`SizedResponse`. No task, no future, no ``BaseRequest`` (a task per request and its
wake-ups were a large part of the CPU per request).

Anything else takes the ordinary path, so behaviour is the same by construction:

* declined before anything was counted or sent (:meth:`FastPath.take` returns False) — an unknown endpoint,
  a refused method, headers over the limit, a token check that fails, ``Expect``, a body still arriving or too
  large for one write, a compressed body, no route (hold), the concurrency limit reached, no idle connection,
  a client not reading its answers: the connection runs :meth:`AppProxy.handle` in a task, which answers
  (404, 401, 503, ...) or connects;
* handed over after the request was sent (:class:`FastExchange`): the replica's answer is a stream, large, not
  complete in the first read, bodiless (``HEAD``, 204, 304) or ``101``, or the wait ended in an error (connection
  closed, read timeout, a malformed answer): :meth:`AppProxy.resumed` continues in a task exactly where
  :meth:`Forwarder.forward` would be after its first attempt, with its counters (the resend on a fresh
  connection for an idempotent request, retries on other routes, 502/504, relaying a stream);
* the client goes away while the replica works: the replica connection is closed (it stops generating) and the
  request is counted as a client disconnect (499), as handler cancellation does on the ordinary path.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
from aiohttp import web
from aiohttp.http_parser import RawRequestMessage, RawResponseMessage
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader

from appproxy.auth import authenticate
from appproxy.cors import CorsGrant
from appproxy.forward import (
    SMALL_BODY,
    STATUS_CLIENT_CLOSED,
    RouteKey,
    header_lines,
    is_stream,
    message_target,
    sized_header_lines,
)
from appproxy.httpserver import HttpConnection, SizedResponse
from appproxy.metrics import NO_ROUTE
from appproxy.upstream import (
    IDEMPOTENT_METHODS,
    READ_BUFSIZE,
    ReplicaProtocol,
    UpstreamPool,
    UpstreamResponse,
    request_head,
)
from common.errors import ProblemError
from common.protocol import RouteTable, RouteTarget

if TYPE_CHECKING:
    from appproxy.auth import TokenCache
    from appproxy.body import BodyBudget
    from appproxy.config import ProxyConfig
    from appproxy.forward import Forwarder, Resumed
    from appproxy.metrics import ProxyMetrics
    from appproxy.routing import RouteCache

log = logging.getLogger(__name__)
_NOTHING: frozenset[RouteKey] = frozenset()
# CONNECT/TRACE are refused, OPTIONS may be a CORS pre-flight (answered by the proxy): the ordinary path's business
_DECLINED_METHODS = frozenset({"CONNECT", "TRACE", "OPTIONS"})


class Proxy(Protocol):
    """What the fast path uses of :class:`appproxy.server.AppProxy`: the ordinary path's state, counters and
    continuations. Described here rather than imported: the server builds the fast path, not the reverse."""

    config: ProxyConfig
    routes: RouteCache
    forwarder: Forwarder
    metrics: ProxyMetrics
    bodies: BodyBudget
    fastpath: FastPath
    _secret: str
    _tokens: TokenCache
    _admitted: Counter[str]

    def admit(self, endpoint: str) -> None: ...

    def release(self, endpoint: str) -> None: ...

    async def respond(self, endpoint: str, started: float,
                      pipeline: Coroutine[Any, Any, tuple[web.StreamResponse | SizedResponse, str]]
                      ) -> web.StreamResponse | SizedResponse: ...

    async def resumed(self, request: web.BaseRequest, endpoint: str, table: RouteTable, body: bytes,
                      attempt: Resumed, cors: CorsGrant | None = None
                      ) -> tuple[web.StreamResponse | SizedResponse, str]: ...


class FastPath:
    """Decides which requests go the fast way and starts them (see the module docstring)."""

    def __init__(self, proxy: Proxy) -> None:
        self._proxy = proxy
        self.taken = 0  # requests started on the fast path (diagnostics, tests)
        self.handed_over = 0  # of those, continued on the ordinary path

    def take(self, conn: HttpConnection, message: RawRequestMessage, payload: StreamReader,
             endpoint_id: uuid.UUID) -> bool:
        """Start ``message`` on the fast path (True) or leave it to the ordinary one (False, nothing done)."""
        proxy = self._proxy
        table = proxy.routes.get(endpoint_id)
        if table is None or not table.routes:
            return False
        method = message.method
        headers = message.headers
        cfg = proxy.config.proxy
        if method in _DECLINED_METHODS or "Expect" in headers or message.compression is not None:
            return False
        raw = message.raw_headers
        if sum(len(name) + len(value) for name, value in raw) + 4 * len(raw) > cfg.max_header_size:
            return False
        if payload is EMPTY_PAYLOAD:
            size = 0
        elif payload.is_eof() and payload.exception() is None:
            size = payload.total_bytes
            if size > cfg.max_body_size or size > READ_BUFSIZE:
                return False
        else:
            return False
        if not table.open_to_public:
            try:
                authenticate(proxy._secret, table, headers, proxy._tokens)
            except ProblemError:
                return False  # the ordinary path answers it (and counts it)
        forwarder = proxy.forwarder
        plan = forwarder.plan(table)
        endpoint = plan.endpoint  # str(endpoint_id), the metrics label
        if proxy._admitted[endpoint] >= cfg.max_concurrency_per_endpoint:
            return False
        bodies = proxy.bodies
        if size and bodies.used + size > bodies.limit:  # the body budget is spent: the ordinary path says 503
            return False
        pool = forwarder._pool
        if pool is None or cfg.upstream_keepalive_timeout <= 0:
            return False
        chosen = plan.single
        if chosen is None or chosen[1].traffic_ratio <= 0:  # what _choose() decides for a single route
            chosen = forwarder._choose(plan, _NOTHING)
            if chosen is None:
                return False
        key, target, route, host = chosen
        proto = pool.take(target.host, target.port)
        if proto is None:
            return False
        # -- taken: from here on, what handle() → _pipeline() → forward() count, in their order -----------------
        body = payload.read_nowait() if size else b""
        bodies.used += size  # given back with the admission: FastExchange._finished or AppProxy.resumed
        cors = None if plan.cors is None else plan.cors.grant(headers.get("Origin"))
        exchange = FastExchange(proxy, conn, message, payload, endpoint, table, chosen, body, conn._loop.time(), cors)
        proxy.metrics.request_started(endpoint)
        proxy.admit(endpoint)
        forwarder._in_flight[key] += 1
        proxy.metrics.route_started(endpoint, route)
        head = request_head(method, message_target(message), host,
                            header_lines(headers, raw, conn.remote, conn.scheme, cfg.trust_forwarded_headers),
                            len(body))
        exchange.head = head
        exchange.proto, exchange.pool = proto, pool  # the pool it was taken from, even if the forwarder closes
        self.taken += 1
        conn.fast_started(exchange)
        try:
            pool.send(proto, method, head, body, exchange)
        except Exception as exc:  # the connection went away under us: as if the wait had ended with it
            proto.listener = None
            exchange.on_error(exc)
        return True


class FastExchange:
    """One request on the fast path, from the request sent to the answer written (or handed over)."""

    __slots__ = ("body", "chosen", "conn", "cors", "endpoint", "error", "head", "message", "payload", "pool",
                 "proto", "proxy", "started", "table", "upstream")

    def __init__(self, proxy: Proxy, conn: HttpConnection, message: RawRequestMessage, payload: StreamReader,
                 endpoint: str, table: RouteTable, chosen: tuple[RouteKey, RouteTarget, str, str], body: bytes,
                 started: float, cors: CorsGrant | None = None) -> None:
        self.proxy, self.conn, self.message, self.payload = proxy, conn, message, payload
        self.endpoint, self.table, self.chosen, self.body, self.started = endpoint, table, chosen, body, started
        self.cors = cors  # CORS headers for the answer (appproxy.cors); None: the endpoint has no policy
        self.head = b""
        self.proto: ReplicaProtocol | None = None
        self.pool: UpstreamPool | None = None
        self.upstream: UpstreamResponse | None = None
        self.error: BaseException | None = None

    # -- from the replica connection ---------------------------------------------------------------------------
    def on_response(self, message: RawResponseMessage, payload: StreamReader) -> None:
        headers = message.headers
        status = message.code
        method = self.message.method
        length = headers.get("Content-Length")
        if (length is None or not length.isdigit() or int(length) > SMALL_BODY or method == "HEAD"
                or status in (204, 304) or not payload.is_eof() or payload.exception() is not None
                or is_stream(headers, status, method)
                or (lines := sized_header_lines(headers, message.raw_headers)) is None):
            target = self.chosen[1]
            assert self.pool is not None and self.proto is not None  # both set when sent
            self.upstream = UpstreamResponse(self.pool, (target.host, target.port), self.proto, method, message,
                                             payload)
            self._hand_over()
            return
        # what Forwarder._relay does for a small sized body, then the counters of forward/_pipeline/handle
        proxy = self.proxy
        forwarder = proxy.forwarder
        key, target, route, _ = self.chosen
        if status >= 500:
            forwarder._failure(self.table, target, "5xx")
        else:
            forwarder._success(key)
        body = payload.read_nowait()
        assert self.pool is not None and self.proto is not None  # both set when sent
        self.pool.release((target.host, target.port), self.proto, payload)
        self._finished(route)
        proxy.metrics.request_finished(self.endpoint, route, status, self.conn._loop.time() - self.started)
        if self.cors is not None:
            lines += self.cors.lines
        self.conn.finish_fast(self.message, SizedResponse(status, message.reason, lines, headers, body), self.started)

    def on_error(self, exc: BaseException) -> None:
        if self.proto is not None:
            self.proto.close()  # as _exchange does: the replica sees the connection close
        self.error = exc
        self._hand_over()

    # -- from the client connection ----------------------------------------------------------------------------
    def abort(self) -> None:
        proto = self.proto
        if proto is not None and proto.listener is self:
            proto.listener = None
            proto.close()  # the replica sees the disconnect and stops generating
        proxy = self.proxy
        self._finished(self.chosen[2])
        proxy.metrics.client_disconnects[self.endpoint] += 1
        proxy.metrics.request_finished(self.endpoint, NO_ROUTE, STATUS_CLIENT_CLOSED,
                                       self.conn._loop.time() - self.started)

    # -- the rest ----------------------------------------------------------------------------------------------
    def _finished(self, route: str) -> None:
        """The counters forward() and _pipeline() release in their ``finally``."""
        proxy = self.proxy
        in_flight = proxy.forwarder._in_flight
        key = self.chosen[0]
        if in_flight[key] <= 1:
            del in_flight[key]
        else:
            in_flight[key] -= 1
        proxy.metrics.route_finished(self.endpoint, route)
        if self.body:
            proxy.bodies.give_back(len(self.body))
        proxy.release(self.endpoint)

    def _hand_over(self) -> None:
        proxy = self.proxy
        proxy.fastpath.handed_over += 1

        async def rest(request: web.BaseRequest) -> web.StreamResponse | SizedResponse:
            return await proxy.respond(self.endpoint, self.started,
                                       proxy.resumed(request, self.endpoint, self.table, self.body, self, self.cors))

        self.conn.continue_with(self.message, self.payload, rest)

    async def outcome(self) -> UpstreamResponse:
        """The first attempt's result, for Forwarder.forward (see :class:`appproxy.forward.Resumed`)."""
        if self.upstream is not None:
            return self.upstream
        exc = self.error
        assert exc is not None
        if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)) and \
                self.message.method in IDEMPOTENT_METHODS:
            target = self.chosen[1]
            pool = self.proxy.forwarder._pool
            assert pool is not None
            return await pool.resend(target.host, target.port, self.message.method, self.head, self.body)
        raise exc
