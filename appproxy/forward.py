"""Forwarding one request to a replica and streaming the answer back (ARCHITECTURE §5).

Request side
    The body is read first, up to ``max_body_size`` (413 beyond; ``Expect: 100-continue`` is answered only when
    we are about to read, i.e. after auth and the concurrency check), so the request can be retried. Headers are
    copied minus the hop-by-hop ones (Connection, Keep-Alive, Proxy-*, TE, Trailer, Transfer-Encoding, Upgrade,
    and every header named in Connection), minus ``Authorization`` and ``Cookie`` (the replica never sees the
    caller's credentials), minus Host/Content-Length/Expect (set for the upstream hop). The path and query are
    sent byte for byte, always to the route's own host and port (an absolute-form request target cannot choose
    the upstream).

    ``X-Forwarded-For`` is the peer address without the port. By default incoming ``X-Forwarded-*``,
    ``Forwarded`` and ``X-Real-IP`` are dropped, because any client can forge them; with
    ``trust_forwarded_headers`` (only behind a load balancer that sets them) the peer is appended to the
    incoming chain and incoming ``X-Forwarded-Proto``/``-Host`` are kept.

Response side
    Status and end-to-end headers are copied; the body is relayed chunk by chunk as it arrives
    (``StreamResponse``, no buffering), except that a body with a ``Content-Length`` of at most
    ``SMALL_BODY`` is read first and sent with the headers in one write (a few packets anyway).
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
    The server runs with ``handler_cancellation``: when the client goes away the handler is cancelled and the
    upstream response is closed (not returned to the pool), which closes the connection to the replica so the
    inference server stops generating. This holds for non-streaming requests too.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from appproxy.balancer import Candidate, pick
from appproxy.config import OutlierSection, ProxySection
from appproxy.errors import BadGateway, GatewayTimeout, NoRouteAvailable, PayloadTooLarge
from appproxy.metrics import ProxyMetrics
from appproxy.outlier import OutlierDetector, OutlierPolicy
from common.protocol import RouteTable, RouteTarget

log = logging.getLogger(__name__)

RouteKey = tuple[uuid.UUID, str, int]  # (route_id, host, port): a new address under the same id starts clean

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te", "trailer",
    "transfer-encoding", "upgrade",
})
# Never sent to the replica: credentials of the caller, and what is recomputed for the upstream hop.
REQUEST_DROP = HOP_BY_HOP | {"authorization", "cookie", "host", "content-length", "expect"}
FORWARDING = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "x-real-ip"})
# Headers aiohttp's client would otherwise invent; the replica should see what the client sent, nothing more.
NO_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
SMALL_BODY = 64 * 1024  # sized responses up to this are relayed with one write (see Forwarder._relay)
STATUS_CLIENT_CLOSED = 499  # metrics only (nginx's convention): the client left before the response ended


def _connection_tokens(headers: CIMultiDictProxy[str]) -> set[str]:
    return {t.strip().lower() for value in headers.getall("Connection", ()) for t in value.split(",") if t.strip()}


def upstream_request_headers(request: web.BaseRequest, trust_forwarded: bool = False) -> CIMultiDict[str]:
    """The headers sent to the replica (see the module docstring)."""
    named = _connection_tokens(request.headers)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in request.headers.items():
        low = name.lower()
        if low in REQUEST_DROP or low in named or low.startswith("proxy-") or low in FORWARDING:
            continue
        out.add(name, value)
    peer = request.remote or ""
    if trust_forwarded:
        chain = [v.strip() for v in request.headers.getall("X-Forwarded-For", ()) if v.strip()]
        out["X-Forwarded-For"] = ", ".join([*chain, peer]) if peer else ", ".join(chain)
        out["X-Forwarded-Proto"] = request.headers.get("X-Forwarded-Proto") or request.scheme
        host = request.headers.get("X-Forwarded-Host") or request.headers.get("Host")
    else:
        if peer:
            out["X-Forwarded-For"] = peer
        out["X-Forwarded-Proto"] = request.scheme
        host = request.headers.get("Host")
    if host:
        out["X-Forwarded-Host"] = host
    return out


def client_response_headers(upstream: aiohttp.ClientResponse) -> CIMultiDict[str]:
    named = _connection_tokens(upstream.headers)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.headers.items():
        low = name.lower()
        if low in HOP_BY_HOP or low in named or low.startswith("proxy-"):
            continue
        out.add(name, value)
    if is_streaming(upstream):
        out["X-Accel-Buffering"] = "no"
        out.setdefault("Cache-Control", "no-cache")
    return out


def is_streaming(upstream: aiohttp.ClientResponse) -> bool:
    """SSE, or a body of unknown length (chunked / until close)."""
    ctype = upstream.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if ctype == "text/event-stream":
        return True
    if upstream.status in (204, 304) or upstream.status < 200 or upstream.method == "HEAD":
        return False
    return "Content-Length" not in upstream.headers


async def read_body(request: web.BaseRequest, limit: int) -> bytes:
    """The whole request body, or :class:`PayloadTooLarge` once it exceeds ``limit`` bytes."""
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"The request body ({length} bytes) exceeds the limit of {limit} bytes.")
    if not request.body_exists:
        return b""
    if request.version >= aiohttp.HttpVersion11 and request.headers.get("Expect", "").lower() == "100-continue":
        # Deferred from the expect handler: only now that the request is authorised and admitted.
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0
    body = bytearray()
    while chunk := await request.content.readany():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"The request body exceeds the limit of {limit} bytes.")
    return bytes(body)


def route_url(target: RouteTarget, request: web.BaseRequest) -> URL:
    rel = request.rel_url  # always relative: an absolute-form target cannot pick the host
    host = f"[{target.host}]" if ":" in target.host and not target.host.startswith("[") else target.host
    return URL.build(scheme="http", host=host, port=target.port, path=rel.raw_path or "/",
                     query_string=rel.raw_query_string, encoded=True)


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
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is not None:
            return
        keepalive = self._cfg.upstream_keepalive_timeout
        connector = aiohttp.TCPConnector(
            limit=0, limit_per_host=0,  # bounded by max_concurrency_per_endpoint instead of a pool queue
            keepalive_timeout=keepalive if keepalive > 0 else None, force_close=keepalive <= 0)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, connect=None, sock_connect=self._cfg.upstream_connect_timeout,
                                          sock_read=self._cfg.upstream_read_timeout),
            cookie_jar=aiohttp.DummyCookieJar(),  # one shared session: a replica's cookies must not leak
            auto_decompress=False, skip_auto_headers=NO_AUTO_HEADERS, trust_env=False)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # -- route state -----------------------------------------------------------------------------------------
    @staticmethod
    def key(target: RouteTarget) -> RouteKey:
        return (target.route_id, target.host, target.port)

    def retain(self, tables: Iterable[RouteTable]) -> None:
        """Forget the outlier state of routes that no longer exist."""
        self.outliers.retain(self.key(r) for t in tables for r in t.routes)

    def choose(self, table: RouteTable, exclude: set[RouteKey]) -> RouteTarget | None:
        now = self._clock()
        targets = {self.key(r): r for r in table.routes}
        candidates = [Candidate(k, r.traffic_ratio, self._in_flight[k], self.outliers.is_ejected(k, now))
                      for k, r in targets.items()]
        chosen = pick(candidates, self._rng, exclude=exclude, panic_threshold=self._panic_threshold)
        return None if chosen is None else targets[chosen.key]

    def _failure(self, table: RouteTable, target: RouteTarget, kind: str) -> None:
        endpoint, route = str(table.endpoint_id), str(target.route_id)
        self.metrics.upstream_failures[(endpoint, route, kind)] += 1
        ejected_for = self.outliers.failure(self.key(target), self._clock())
        if ejected_for is not None:
            self.metrics.ejections[(endpoint, route)] += 1
            log.warning("route %s (%s:%d) of endpoint %s ejected for %.1fs after %d consecutive failures (last: %s)",
                        route, target.host, target.port, table.name, ejected_for,
                        self.outliers.policy.consecutive_failures, kind)

    def _success(self, target: RouteTarget) -> None:
        self.outliers.success(self.key(target), self._clock())

    # -- forwarding ------------------------------------------------------------------------------------------
    async def forward(self, request: web.BaseRequest, table: RouteTable, body: bytes
                      ) -> tuple[web.StreamResponse, str]:
        """Send the request to a route; return the response sent to the client and the route id that served it."""
        if self._session is None:
            raise RuntimeError("Forwarder.start() was not called")
        headers = upstream_request_headers(request, self._cfg.trust_forwarded_headers)
        endpoint = str(table.endpoint_id)
        tried: set[RouteKey] = set()
        last_error = ""
        for attempt in range(self._cfg.max_attempts):
            target = self.choose(table, tried)
            if target is None:
                break
            key = self.key(target)
            tried.add(key)
            route = str(target.route_id)
            if attempt:
                self.metrics.retries[endpoint] += 1
            self._in_flight[key] += 1
            self.metrics.route_started(endpoint, route)
            try:
                try:
                    upstream = await self._session.request(
                        request.method, route_url(target, request), headers=headers, data=body or None,
                        allow_redirects=False)
                except aiohttp.ConnectionTimeoutError:
                    kind, last_error = "connect", "connect timeout"
                except aiohttp.ServerTimeoutError:  # sock_read before the headers: the replica may be working
                    self._failure(table, target, "timeout")
                    raise GatewayTimeout(f"The replica sent no response within "
                                         f"{self._cfg.upstream_read_timeout:g}s.") from None
                except aiohttp.ClientConnectorError as exc:
                    kind, last_error = "connect", f"connect failed: {exc.os_error.strerror or exc.os_error}"
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                    kind, last_error = "reset", f"connection reset ({type(exc).__name__})"
                except aiohttp.ClientError as exc:  # e.g. a malformed response: not retried
                    self._failure(table, target, "protocol")
                    log.warning("bad response from route %s (%s:%d): %s", route, target.host, target.port, exc)
                    raise BadGateway("The replica sent an invalid response.") from None
                else:
                    return await self._relay(request, table, target, upstream), route
                self._failure(table, target, kind)
                log.info("route %s (%s:%d) of %s failed before the first byte (%s); %s", route, target.host,
                         target.port, table.name, last_error,
                         "retrying" if attempt + 1 < self._cfg.max_attempts else "giving up")
            finally:
                self._in_flight[key] -= 1
                if self._in_flight[key] <= 0:
                    del self._in_flight[key]
                self.metrics.route_finished(endpoint, route)
        if not tried:
            raise NoRouteAvailable(
                "No replica of this endpoint is ready; try again shortly.", retry_after=self._cfg.retry_after)
        raise BadGateway(f"No replica could be reached ({len(tried)} tried; last error: {last_error}).")

    async def _relay(self, request: web.BaseRequest, table: RouteTable, target: RouteTarget,
                     upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        clean = False
        try:
            if upstream.status >= 500:
                self._failure(table, target, "5xx")
            else:
                self._success(target)
            headers = client_response_headers(upstream)
            length = upstream.content_length
            if (length is not None and length <= SMALL_BODY and upstream.method != "HEAD"
                    and upstream.status not in (204, 304) and "X-Accel-Buffering" not in headers):
                # A small sized body (the usual non-streaming answer) is relayed in one write together with the
                # headers: one send() instead of three. Its length is fixed, so nothing is held back that a
                # client could have used earlier.
                try:
                    body = await upstream.read()
                except (TimeoutError, aiohttp.ClientError) as exc:
                    self._failure(table, target, "stream")
                    raise BadGateway(f"The replica broke off its response ({type(exc).__name__}).") from None
                clean = True
                return web.Response(status=upstream.status, reason=upstream.reason, headers=headers, body=body)
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
            try:
                await response.prepare(request)
                while True:
                    try:
                        chunk = await upstream.content.readany()
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
                    await response.write(chunk)
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

