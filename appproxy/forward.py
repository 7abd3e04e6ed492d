"""Forwarding one request to a replica and streaming the answer back (docs/architecture.md, App proxy data path).

Request side
    A body of up to ``retry_buffer_size`` is read first, so the request can be retried; a larger one is streamed
    as it arrives (:mod:`appproxy.body`: sizes, the process-wide budget, ``Expect: 100-continue``). Headers are
    copied minus the hop-by-hop ones (Connection, Keep-Alive, Proxy-*, TE, Trailer, Transfer-Encoding, Upgrade,
    and every header named in Connection), minus ``Authorization`` and ``Cookie`` (the replica never sees the
    caller's credentials), minus Host/Content-Length/Expect (set for the upstream hop). The path and query are
    sent byte for byte, always to the route's own host and port (an absolute-form request target cannot choose
    the upstream).

    ``X-Forwarded-For`` is the peer address without the port. By default incoming ``X-Forwarded-*``,
    ``Forwarded`` and ``X-Real-IP`` are dropped, because any client can forge them; with
    ``trust_forwarded_headers`` (only behind a load balancer that sets them) the peer is appended to the
    incoming chain and incoming ``X-Forwarded-Proto``/``-Host`` are kept.

    The request goes out through :mod:`appproxy.upstream` (pooled keep-alive connections on aiohttp's client
    protocol and response parser; ``aiohttp.ClientSession`` was a third of the CPU per request): request line,
    ``Host``, the kept header lines as received, ``Content-Length`` when there is a body (or the method has one),
    and the body, in one write.

Response side
    Status and end-to-end headers are copied, except the replica's ``Access-Control-*`` ones: the endpoint's CORS
    policy is the proxy's (:mod:`appproxy.cors`), which adds its own for allowed origins. The body is relayed
    chunk by chunk as it arrives (``StreamResponse``, no buffering), except that a body with a ``Content-Length``
    of at most ``SMALL_BODY`` is read first and sent with the headers in one write (a few packets anyway): a
    :class:`~appproxy.httpserver.SizedResponse` carrying the replica's end-to-end header lines byte for byte.
    ``text/event-stream`` and responses without a length get ``X-Accel-Buffering: no`` and, unless the
    replica set one, ``Cache-Control: no-cache`` so that a reverse proxy in front of us does not buffer them
    either. Bytes are relayed undecoded (no decompression).

Failures
    Before any byte went to the client, a connection failure (refused, reset, connect timeout) is retried on
    another route, up to ``max_attempts`` distinct routes; then 502. A replica silent for ``upstream_read_timeout``
    before its headers → 504 (not retried: it may be working). A 5xx from the replica is relayed as is (not
    retried: the replica did receive the request). Every failure and 5xx counts towards passive ejection.
    After bytes were streamed nothing is retried: if the replica breaks off, the client's connection is closed
    without the final chunk, so the client sees a truncated response rather than a complete-looking one.

Client disconnect
    When the client goes away the handler is cancelled (:mod:`appproxy.httpserver`; on the fast path,
    :mod:`appproxy.fastpath`, the pending exchange is aborted) and the upstream response is closed (not returned to
    the pool), which closes the connection to the replica so the inference server stops generating. This holds for
    non-streaming requests too.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Protocol

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import RawRequestMessage
from multidict import CIMultiDictProxy

from appproxy.balancer import Candidate, pick
from appproxy.body import BodyStream
from appproxy.config import OutlierSection, ProxySection
from appproxy.cors import CorsGrant, CorsPolicy
from appproxy.errors import BadGateway, GatewayTimeout, NoRouteAvailable
from appproxy.httpserver import SizedResponse
from appproxy.metrics import ProxyMetrics
from appproxy.outlier import OutlierDetector, OutlierPolicy
from appproxy.upstream import (
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamPool,
    UpstreamResponse,
    host_header,
    request_head,
)
from common.protocol import RouteTable, RouteTarget

log = logging.getLogger(__name__)

# "<route_id> <host>:<port>": a new address under the same id starts clean. A string, not a tuple holding the
# UUID: it is hashed a dozen times per request, and str caches its hash (UUID.__hash__ is Python code).
RouteKey = str

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te", "trailer",
    "transfer-encoding", "upgrade",
})
# Never sent to the replica: credentials of the caller, and what is recomputed for the upstream hop.
REQUEST_DROP = HOP_BY_HOP | {"authorization", "cookie", "host", "content-length", "expect"}
FORWARDING = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "x-real-ip"})
_DROP_RAW = frozenset(name.encode() for name in REQUEST_DROP | FORWARDING)  # raw (bytes) header names, lower case
SMALL_BODY = 64 * 1024  # sized responses up to this are relayed with one write (see Forwarder._relay)
STATUS_CLIENT_CLOSED = 499  # metrics only (nginx's convention): the client left before the response ended


def _connection_tokens(headers: CIMultiDictProxy[str]) -> set[str]:
    return {t.strip().lower() for value in headers.getall("Connection", ()) for t in value.split(",") if t.strip()}


def _encode(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")  # the inverse of how aiohttp decoded the request headers


def upstream_header_lines(request: web.BaseRequest, trust_forwarded: bool = False) -> bytes:
    """The header lines sent to the replica (see the module docstring), as ``b"Name: value\r\n"...``."""
    return header_lines(request.headers, request.raw_headers, request.remote or "", request.scheme, trust_forwarded)


def header_lines(headers: CIMultiDictProxy[str], raw_headers: tuple[tuple[bytes, bytes], ...], peer: str,
                 scheme: str, trust_forwarded: bool = False) -> bytes:
    """:func:`upstream_header_lines` from the parsed request's parts (``peer``: the client address, no port).

    The kept headers are copied byte for byte from the request as received (aiohttp's parser has already refused
    CR/LF in them); ``Host`` and ``Content-Length`` are added by :func:`appproxy.upstream.request_head`."""
    named = {n.encode("latin-1") for n in _connection_tokens(headers)} if "Connection" in headers else None
    parts: list[bytes] = []
    for name, value in raw_headers:
        low = name.lower()
        if low in _DROP_RAW or low.startswith(b"proxy-") or (named and low in named):
            continue
        parts += (name, b": ", value, b"\r\n")
    if trust_forwarded:
        chain = [v.strip() for v in headers.getall("X-Forwarded-For", ()) if v.strip()]
        parts += (b"X-Forwarded-For: ", _encode(", ".join([*chain, peer]) if peer else ", ".join(chain)), b"\r\n",
                  b"X-Forwarded-Proto: ", _encode(headers.get("X-Forwarded-Proto") or scheme), b"\r\n")
        host = headers.get("X-Forwarded-Host") or headers.get("Host")
    else:
        if peer:
            parts += (b"X-Forwarded-For: ", peer.encode(), b"\r\n")
        parts += (b"X-Forwarded-Proto: ", scheme.encode(), b"\r\n")
        host = headers.get("Host")
    if host:
        parts += (b"X-Forwarded-Host: ", _encode(host), b"\r\n")
    return b"".join(parts)


_END_TO_END: dict[str, bool] = {}  # response header name as sent → not hop-by-hop (names repeat: memoised)


def _end_to_end(name: str) -> bool:
    keep = _END_TO_END.get(name)
    if keep is None:
        low = name.lower()
        keep = not (low in HOP_BY_HOP or low.startswith(("proxy-", "access-control-")))
        if len(_END_TO_END) < 4096:  # bounded: header names are chosen by the replica
            _END_TO_END[name] = keep
    return keep


def client_response_headers(upstream: UpstreamResponse) -> tuple[list[tuple[str, str]], bool]:
    """The end-to-end headers for the client (a list: ``web.Response`` builds its own multidict from it) and
    whether the body is a stream (then with ``X-Accel-Buffering: no`` and, by default, ``Cache-Control``)."""
    headers = upstream.headers
    streaming = is_streaming(upstream)
    known = _END_TO_END.get  # inlined fast path of _end_to_end (True: keep, False: drop, None: not seen yet)
    out = [(name, value) for name, value in headers.items()
           if known(name) or (known(name) is None and _end_to_end(name))]
    if "Connection" in headers and (named := _connection_tokens(headers)):
        out = [(name, value) for name, value in out if name.lower() not in named]
    if streaming:
        out = [(name, value) for name, value in out if name.lower() != "x-accel-buffering"]
        out.append(("X-Accel-Buffering", "no"))
        if not any(name.lower() == "cache-control" for name, _ in out):
            out.append(("Cache-Control", "no-cache"))
    return out, streaming


_CONNECTION_OPTIONS = HOP_BY_HOP | {"close"}  # Connection tokens that name no end-to-end header
_KEEP_RAW: dict[bytes, bool] = {}  # response header name as received → not hop-by-hop (memoised, bounded)
_PLAIN_CONNECTION: dict[str, bool] = {}  # Connection header value → names only hop-by-hop headers


def _keep_raw(name: bytes) -> bool:
    low = name.lower()
    keep = not (low.decode("latin-1") in HOP_BY_HOP or low.startswith((b"proxy-", b"access-control-")))
    if len(_KEEP_RAW) < 4096:
        _KEEP_RAW[name] = keep
    return keep


def sized_header_lines(headers: CIMultiDictProxy[str], raw_headers: tuple[tuple[bytes, bytes], ...]
                       ) -> bytes | None:
    """The replica's end-to-end header lines as received (``b"Name: value\r\n"...``), or None when its
    ``Connection`` header names end-to-end headers to drop too (rare; then :func:`client_response_headers`)."""
    if "Connection" in headers:
        value = ",".join(headers.getall("Connection"))
        plain = _PLAIN_CONNECTION.get(value)
        if plain is None:
            plain = _connection_tokens(headers) <= _CONNECTION_OPTIONS
            if len(_PLAIN_CONNECTION) < 256:
                _PLAIN_CONNECTION[value] = plain
        if not plain:
            return None
    known = _KEEP_RAW.get
    parts: list[bytes] = []
    for name, raw_value in raw_headers:
        keep = known(name)
        if keep or (keep is None and _keep_raw(name)):
            parts += (name, b": ", raw_value, b"\r\n")
    return b"".join(parts)


def is_streaming(upstream: UpstreamResponse) -> bool:
    """SSE, or a body of unknown length (chunked / until close)."""
    return is_stream(upstream.headers, upstream.status, upstream.method)


def is_stream(headers: CIMultiDictProxy[str], status: int, method: str) -> bool:
    ctype = headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if ctype == "text/event-stream":
        return True
    if status in (204, 304) or status < 200 or method == "HEAD":
        return False
    return "Content-Length" not in headers


def request_target(request: web.BaseRequest) -> str:
    """Path and query as received; always origin-form (an absolute-form target cannot pick the host)."""
    rel = request.rel_url
    query = rel.raw_query_string
    return f"{rel.raw_path or '/'}?{query}" if query else rel.raw_path or "/"


def message_target(message: RawRequestMessage) -> str:
    """:func:`request_target` of a parsed request: the target itself when it is a plain origin-form one."""
    path = message.path
    if path[:1] == "/" and path[1:2] != "/" and "#" not in path and path[-1] != "?":
        return path
    url = message.url
    rel = url.relative() if url.absolute else url
    query = rel.raw_query_string
    return f"{rel.raw_path or '/'}?{query}" if query else rel.raw_path or "/"


class Resumed(Protocol):
    """An attempt the fast path (:mod:`appproxy.fastpath`) started and hands over: its route (already counted in
    flight) and its outcome, the response or the error re-raised (see :meth:`Forwarder.forward`)."""

    chosen: tuple[RouteKey, RouteTarget, str, str]

    def outcome(self) -> Awaitable[UpstreamResponse]: ...


class ResponseTap(Protocol):
    """Watches (and may rewrite) an answer as it is relayed: the gateway's usage metering
    (:mod:`appproxy.gateway.usage`). ``sized`` sees a small sized body (relayed unchanged); ``chunk`` each piece
    of a streamed body and returns what to send instead; ``finish`` what it held back, at the end."""

    def sized(self, body: bytes) -> None: ...

    def chunk(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


class _Plan:
    """What forwarding needs from one route table, computed once per table (tables are immutable)."""

    __slots__ = ("cors", "endpoint", "routes", "single", "table")

    def __init__(self, table: RouteTable) -> None:
        self.table = table
        self.endpoint = str(table.endpoint_id)
        self.cors = CorsPolicy.compile(table.cors_allowed_origins, self.endpoint)  # None: no origin allowed
        # (key, target, route id as a string, Host header)
        by_key = {Forwarder.key(r): r for r in table.routes}  # a duplicated route counts once, as in choose()
        self.routes = [(k, r, str(r.route_id), host_header(r.host, r.port)) for k, r in by_key.items()]
        self.single = self.routes[0] if len(self.routes) == 1 else None


class Forwarder:
    """Owns the upstream connection pool, per-route in-flight counts and the passive outlier state."""

    def __init__(self, proxy: ProxySection, outlier: OutlierSection, metrics: ProxyMetrics,
                 rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._cfg = proxy
        self._panic_threshold = outlier.panic_threshold
        self.outliers: OutlierDetector[RouteKey] = OutlierDetector(OutlierPolicy(
            consecutive_failures=outlier.consecutive_failures, base_ejection=outlier.base_ejection,
            max_ejection=outlier.max_ejection))
        self.metrics = metrics
        self._rng = rng or random.Random()
        self._clock = clock
        self._in_flight: Counter[RouteKey] = Counter()
        self._pool: UpstreamPool | None = None
        self._plans: dict[uuid.UUID, _Plan] = {}

    async def start(self) -> None:
        if self._pool is not None:
            return
        self._pool = UpstreamPool(
            connect_timeout=self._cfg.upstream_connect_timeout, read_timeout=self._cfg.upstream_read_timeout,
            keepalive_timeout=self._cfg.upstream_keepalive_timeout)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    # -- route state -----------------------------------------------------------------------------------------
    @staticmethod
    def key(target: RouteTarget) -> RouteKey:
        return f"{target.route_id} {target.host}:{target.port}"

    def retain(self, tables: Iterable[RouteTable]) -> None:
        """Forget the outlier state, plans and idle connections of routes that no longer exist."""
        tables = list(tables)
        self.outliers.retain(self.key(r) for t in tables for r in t.routes)
        self._plans = {t.endpoint_id: p for t in tables if (p := self._plans.get(t.endpoint_id)) and p.table is t}
        if self._pool is not None:
            self._pool.drop({(r.host, r.port) for t in tables for r in t.routes})

    def plan(self, table: RouteTable) -> _Plan:
        plan = self._plans.get(table.endpoint_id)
        if plan is None or plan.table is not table:
            plan = self._plans[table.endpoint_id] = _Plan(table)
        return plan

    def choose(self, table: RouteTable, exclude: set[RouteKey]) -> RouteTarget | None:
        chosen = self._choose(self.plan(table), exclude)
        return None if chosen is None else chosen[1]

    def _choose(self, plan: _Plan, exclude: Collection[RouteKey]) -> tuple[RouteKey, RouteTarget, str, str] | None:
        single = plan.single
        if single is not None:  # what pick() decides for one route, without building candidates
            return single if single[1].traffic_ratio > 0 and single[0] not in exclude else None
        now = self._clock()
        by_key = {}
        candidates = []
        for entry in plan.routes:
            k, r = entry[0], entry[1]
            by_key[k] = entry
            candidates.append(Candidate(k, r.traffic_ratio, self._in_flight[k], self.outliers.is_ejected(k, now)))
        chosen = pick(candidates, self._rng, exclude=exclude, panic_threshold=self._panic_threshold)
        return None if chosen is None else by_key[chosen.key]

    def _failure(self, table: RouteTable, target: RouteTarget, kind: str) -> None:
        endpoint, route = str(table.endpoint_id), str(target.route_id)
        self.metrics.upstream_failures[(endpoint, route, kind)] += 1
        ejected_for = self.outliers.failure(self.key(target), self._clock())
        if ejected_for is not None:
            self.metrics.ejections[(endpoint, route)] += 1
            log.warning("route %s (%s:%d) of endpoint %s ejected for %.1fs after %d consecutive failures (last: %s)",
                        route, target.host, target.port, table.name, ejected_for,
                        self.outliers.policy.consecutive_failures, kind)

    def _success(self, key: RouteKey) -> None:
        self.outliers.success(key, 0.0)  # the clock plays no part in a success

    # -- forwarding ------------------------------------------------------------------------------------------
    async def forward(self, request: web.BaseRequest, table: RouteTable, body: bytes | BodyStream,
                      resumed: Resumed | None = None, cors: CorsGrant | None = None,
                      tap: ResponseTap | None = None) -> tuple[web.StreamResponse | SizedResponse, str]:
        """Send the request to a route; return the response sent to the client and the route id that served it.

        ``resumed``: the first attempt was started by the fast path (same route choice, counters and retry rules;
        only its response or error comes from there). ``cors``: headers added to the answer (:mod:`appproxy.cors`; the
        gateway passes its rate-limit headers the same way). ``tap``: sees the answer's body (:class:`ResponseTap`).
        A streamed ``body`` (:class:`appproxy.body.BodyStream`) is retried after a connect failure only: once
        the client's bytes have gone to a replica, a failure is a 502."""
        pool = self._pool
        if pool is None:
            raise RuntimeError("Forwarder.start() was not called")
        plan = self.plan(table)
        method = request.method
        target_path = request_target(request)
        lines = upstream_header_lines(request, self._cfg.trust_forwarded_headers)
        if self._cfg.upstream_keepalive_timeout <= 0:
            lines += b"Connection: close\r\n"  # no pooling: tell the replica, as aiohttp's force_close did
        size = len(body) if isinstance(body, bytes) else body.length  # None: chunked
        endpoint = plan.endpoint
        metrics = self.metrics
        in_flight = self._in_flight
        tried: set[RouteKey] = set()
        last_error = ""
        for attempt in range(self._cfg.max_attempts):
            if attempt == 0 and resumed is not None:
                key, target, route, host = resumed.chosen
                tried.add(key)  # counted in flight and started by the fast path
            else:
                chosen = self._choose(plan, tried)
                if chosen is None:
                    break
                key, target, route, host = chosen
                tried.add(key)
                if attempt:
                    metrics.retries[endpoint] += 1
                in_flight[key] += 1
                metrics.route_started(endpoint, route)
            try:
                try:
                    if attempt == 0 and resumed is not None:
                        upstream = await resumed.outcome()
                    else:
                        upstream = await pool.request(target.host, target.port, method,
                                                      request_head(method, target_path, host, lines, size), body)
                except UpstreamConnectTimeout:
                    kind, last_error = "connect", "connect timeout"
                except aiohttp.ServerTimeoutError:  # read timeout before the headers: the replica may be working
                    self._failure(table, target, "timeout")
                    raise GatewayTimeout(f"The replica sent no response within "
                                         f"{self._cfg.upstream_read_timeout:g}s.") from None
                except UpstreamConnectError as exc:
                    kind, last_error = "connect", f"connect failed: {exc.os_error.strerror or exc.os_error}"
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                    kind, last_error = "reset", f"connection reset ({type(exc).__name__})"
                    if not isinstance(body, bytes) and body.started:  # part of a streamed body is gone
                        self._failure(table, target, kind)
                        raise BadGateway("The replica closed the connection while the request body was being "
                                         "sent.") from None
                except (HttpProcessingError, aiohttp.ClientError) as exc:  # e.g. a malformed response: not retried
                    self._failure(table, target, "protocol")
                    log.warning("bad response from route %s (%s:%d): %s", route, target.host, target.port, exc)
                    raise BadGateway("The replica sent an invalid response.") from None
                else:
                    return await self._relay(request, table, key, target, upstream, cors, tap), route
                self._failure(table, target, kind)
                log.info("route %s (%s:%d) of %s failed before the first byte (%s); %s", route, target.host,
                         target.port, table.name, last_error,
                         "retrying" if attempt + 1 < self._cfg.max_attempts else "giving up")
            finally:
                if in_flight[key] <= 1:
                    del in_flight[key]
                else:
                    in_flight[key] -= 1
                metrics.route_finished(endpoint, route)
        if not tried:
            raise NoRouteAvailable(
                "No replica of this endpoint is ready; try again shortly.", retry_after=self._cfg.retry_after)
        raise BadGateway(f"No replica could be reached ({len(tried)} tried; last error: {last_error}).")

    async def _relay(self, request: web.BaseRequest, table: RouteTable, key: RouteKey, target: RouteTarget,
                     upstream: UpstreamResponse, cors: CorsGrant | None = None,
                     tap: ResponseTap | None = None) -> web.StreamResponse | SizedResponse:
        clean = False
        try:
            status = upstream.status
            if status >= 500:
                self._failure(table, target, "5xx")
            else:
                self._success(key)
            length = upstream.content_length
            if (length is not None and length <= SMALL_BODY and upstream.method != "HEAD"
                    and status not in (204, 304) and not is_streaming(upstream)):
                # A small sized body (the usual non-streaming answer) is relayed in one write together with the
                # headers: one send() instead of three. Its length is fixed, so nothing is held back that a
                # client could have used earlier.
                try:
                    body = await upstream.read()
                except (TimeoutError, aiohttp.ClientError) as exc:
                    self._failure(table, target, "stream")
                    raise BadGateway(f"The replica broke off its response ({type(exc).__name__}).") from None
                clean = True
                if tap is not None:
                    tap.sized(body)
                lines = sized_header_lines(upstream.headers, upstream.raw_headers)
                if lines is not None:
                    if cors is not None:
                        lines += cors.lines
                    return SizedResponse(status, upstream.reason, lines, upstream.headers, body)
                headers = client_response_headers(upstream)[0]
                if cors is not None:
                    headers += cors.pairs
                return web.Response(status=status, reason=upstream.reason, headers=headers, body=body)
            headers, _ = client_response_headers(upstream)
            if cors is not None:
                headers += cors.pairs
            if tap is not None:  # the tap may change the body's length: send it chunked
                headers = [(name, value) for name, value in headers if name.lower() != "content-length"]
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
            content = upstream.content
            try:
                await response.prepare(request)
                while True:
                    try:
                        chunk = await content.readany()
                    except (TimeoutError, aiohttp.ClientError) as exc:
                        self._failure(table, target, "stream")
                        log.warning("route %s (%s:%d) of %s broke off mid-response (%s); closing the client "
                                    "connection", target.route_id, target.host, target.port, table.name,
                                    type(exc).__name__)
                        if request.transport is not None:
                            request.transport.close()  # no final chunk: the client must see the truncation
                        return response
                    if not chunk:
                        break
                    if tap is not None:
                        chunk = tap.chunk(chunk)
                        if not chunk:
                            continue
                    await response.write(chunk)  # as soon as it arrives: never held back to fill a buffer
                if tap is not None and (rest := tap.finish()):
                    await response.write(rest)
                await response.write_eof()
            except ConnectionResetError:  # the client went away (without handler cancellation noticing first)
                self.metrics.client_disconnects[str(table.endpoint_id)] += 1
                response.force_close()
                return response
            clean = True
            return response
        finally:
            if clean:
                upstream.release()
            else:
                upstream.close()  # drop the connection: the replica sees the disconnect and stops generating
