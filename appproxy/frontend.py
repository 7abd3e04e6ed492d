"""Frontends: how a connection finds its endpoint. ``make_frontend`` picks one from ``[proxy] frontend``.

Wildcard mode (:class:`WildcardFrontend`): one listener on ``bind_host:wildcard_port``; the endpoint is the one
whose table's ``subdomain`` + ``wildcard_domain`` equals the request's Host header, compared case-insensitively
with the port and a trailing dot ignored. Any other Host (unknown, missing, an IP address) → 404 problem. Two
live tables claiming one subdomain: the lowest endpoint id is served and the conflict logged (the manager keeps
subdomains unique; this is only the tie-break).

Port mode (:class:`PortFrontend`): one listening port per endpoint, all served by one application.

One :class:`appproxy.httpserver.HttpServer` (a plain asyncio protocol on aiohttp's C request parser; aiohttp's
``web.Server`` cost more CPU per request than the rest of the proxy) answers every listener with a single
handler; each endpoint whose table has a ``port`` gets a listener on ``bind_host:port``. The handler finds the
endpoint from the local port the connection came in on, so the Host header plays no part in routing (vLLM's
Host-header auth bypass is the lesson there).

Sites follow the route tables level-triggered: :meth:`PortFrontend.changed` wakes a reconcile task that opens
missing ports and closes ports whose endpoint is gone (idle keep-alive connections accepted on a closed port are
closed too, requests in progress finish). A port that cannot be bound (in use, no permission) is logged and
tried again every ``bind_retry_interval`` without holding up the other endpoints. When two tables claim the same
port, the endpoint already bound keeps it (otherwise the lowest endpoint id wins) and the conflict is logged.

The parser limits (``max_line_size``, ``max_field_size``, ``max_headers``) bound what a client can make us buffer
before any handler code runs; a client disconnect cancels the request handler, which is how an abandoned
generation is stopped upstream (see :mod:`appproxy.forward`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader

from appproxy.config import ProxySection
from appproxy.errors import EndpointNotFound
from appproxy.httpserver import HttpConnection, HttpServer, Listener, SizedResponse
from appproxy.routing import RouteCache
from common.aio import cancel_and_wait

log = logging.getLogger(__name__)


def log_new_conflicts(claims: dict[Any, list[uuid.UUID]], winners: dict[Any, uuid.UUID],
                      known: set[tuple[Any, uuid.UUID]], what: str) -> set[tuple[Any, uuid.UUID]]:
    """Log each endpoint that claims a port or host another endpoint has, once per conflict; returns the
    conflicts that still stand (so a conflict that went away and comes back is logged again)."""
    for key, endpoints in claims.items():
        winner = winners[key]
        for loser in endpoints:
            if loser != winner and (key, loser) not in known:
                known.add((key, loser))
                log.error("endpoint %s claims %s %s, which endpoint %s already has; not served until that "
                          "conflict is resolved", loser, what, key, winner)
    return {(k, e) for k, e in known if e in claims.get(k, ())}

Handler = Callable[[web.BaseRequest, uuid.UUID], Awaitable[web.StreamResponse | SizedResponse]]
# appproxy.fastpath.FastPath.take: a complete request for an endpoint, taken (True) or left to Handler
FastHandler = Callable[[HttpConnection, RawRequestMessage, StreamReader, uuid.UUID], bool]


def unknown_expect(request: web.BaseRequest) -> web.Response | None:
    """``Expect: 100-continue`` is answered later, right before the body is read (after auth and admission);
    any other expectation is refused with 417, as aiohttp's router does."""
    expect = request.headers.get("Expect")
    if expect is None or expect.lower() == "100-continue":
        return None
    return web.Response(status=417, text=f"Unknown Expect: {expect}")


def local_port(request: web.BaseRequest) -> int | None:
    sockname = request.protocol.sockname  # HttpConnection: read once per connection
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        return int(sockname[1])
    return None


def make_server(config: ProxySection,
                 handle: Callable[[web.BaseRequest], Awaitable[web.StreamResponse | SizedResponse]],
                 fast: Callable[[HttpConnection, RawRequestMessage, StreamReader], bool] | None,
                 ssl_context: ssl.SSLContext | None = None) -> HttpServer:
    async def serve(request: web.BaseRequest) -> web.StreamResponse | SizedResponse:
        if "Expect" in request.headers and (refused := unknown_expect(request)) is not None:
            return refused
        return await handle(request)

    return HttpServer(
        serve,
        fast=fast,
        # Off by default: a log line per request costs more than the rest of the hot path (metrics count instead).
        access_log_enabled=config.access_log,
        max_line_size=config.max_request_line,
        max_field_size=config.max_header_size,
        max_headers=config.max_header_count,
        head_timeout=config.request_head_timeout,
        keepalive_timeout=config.keepalive_timeout,
        max_connections_per_client=config.max_connections_per_client,
        retry_after=config.retry_after,
        ssl_context=ssl_context,
    )


def host_key(host: str) -> str:
    """``Chat.Apps.Example.com:8080`` → ``chat.apps.example.com`` (port and a trailing dot dropped)."""
    host = host.strip().lower()
    if host.startswith("["):  # an IPv6 literal never names an endpoint
        return host
    host = host.rpartition(":")[0] if ":" in host else host
    return host.rstrip(".")


class WildcardFrontend:
    def __init__(self, config: ProxySection, routes: RouteCache, handler: Handler, *,
                 reuse_port: bool = False, fast: FastHandler | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._cfg = config
        self._routes = routes
        self._handler = handler
        self._fast_handler = fast
        self._reuse_port = reuse_port
        self._domain = config.wildcard_domain.lower().rstrip(".")
        self._server = make_server(config, self._handle, self._fast if fast is not None else None, ssl_context)
        self._site: Listener | None = None
        self._host_map: dict[str, uuid.UUID] = {}  # what the handler reads: lower-case host → endpoint
        self._conflicts: set[tuple[str, uuid.UUID]] = set()
        self.synced_version = -1

    @property
    def hosts(self) -> dict[str, uuid.UUID]:
        return dict(self._host_map)

    @property
    def ports(self) -> dict[int, uuid.UUID]:
        return {}

    @property
    def port(self) -> int | None:
        if self._site is None:
            return None
        port = self._site.port
        return self._cfg.wildcard_port if port is None else port

    async def start(self) -> None:
        self._site = await self._server.listen(self._cfg.bind_host, self._cfg.wildcard_port,
                                               reuse_port=self._reuse_port)
        log.info("wildcard frontend listening on %s:%d for *%s%s", self._cfg.bind_host, self.port, self._domain,
                 " (HTTPS)" if self._server.ssl_context else "")

    async def stop(self) -> None:
        self._host_map = {}
        self._site = None
        await self._server.shutdown(self._cfg.shutdown_timeout)

    def changed(self) -> None:
        version = self._routes.version
        claims: dict[str, list[uuid.UUID]] = {}
        for table in self._routes.tables.values():
            if table.subdomain:
                claims.setdefault(table.subdomain.lower() + self._domain, []).append(table.endpoint_id)
        host_map: dict[str, uuid.UUID] = {}
        for host, endpoints in claims.items():
            host_map[host] = min(endpoints)
        self._conflicts = log_new_conflicts(claims, host_map, self._conflicts, "host")
        self._host_map = host_map
        self.synced_version = version

    async def sync(self) -> None:
        self.changed()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse | SizedResponse:
        endpoint_id = self._host_map.get(host_key(request.headers.get("Host", "")))
        if endpoint_id is None:
            return EndpointNotFound("No endpoint is served at this host name.").to_response()
        return await self._handler(request, endpoint_id)

    def _fast(self, conn: HttpConnection, message: RawRequestMessage, payload: StreamReader) -> bool:
        endpoint_id = self._host_map.get(host_key(message.headers.get("Host", "")))
        fast = self._fast_handler  # set whenever this method is installed
        return endpoint_id is not None and fast is not None and fast(conn, message, payload, endpoint_id)


class PortFrontend:
    def __init__(self, config: ProxySection, routes: RouteCache, handler: Handler, *,
                 reuse_port: bool = False, fast: FastHandler | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._cfg = config
        self._routes = routes
        self._handler = handler
        self._fast_handler = fast
        self._reuse_port = reuse_port
        self._server = make_server(config, self._handle, self._fast if fast is not None else None, ssl_context)
        self._sites: dict[int, tuple[uuid.UUID, Listener]] = {}
        self._port_map: dict[int, uuid.UUID] = {}  # what the handler reads: bound port → endpoint
        self._bind_errors: dict[int, str] = {}  # port → last error, to log each new error once
        self._conflicts: set[tuple[int, uuid.UUID]] = set()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.synced_version = -1  # RouteCache.version that the open ports reflect

    @property
    def ports(self) -> dict[int, uuid.UUID]:
        """The ports currently listening and the endpoint each serves."""
        return dict(self._port_map)

    @property
    def failed_ports(self) -> dict[int, str]:
        return dict(self._bind_errors)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="appproxy-port-frontend")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        self._sites.clear()
        self._port_map.clear()
        await self._server.shutdown(self._cfg.shutdown_timeout)  # closes the ports, lets requests finish

    def changed(self) -> None:
        self._wake.set()

    async def sync(self) -> None:
        """Bring the open ports in line with the route tables now."""
        async with self._lock:
            version = self._routes.version
            await self._reconcile()
            self.synced_version = version

    async def _loop(self) -> None:
        while True:
            timeout = self._cfg.bind_retry_interval if self._bind_errors else None
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one bad table stop port management for everyone
                log.exception("port reconciliation failed; retrying")
                await asyncio.sleep(self._cfg.bind_retry_interval)

    def _desired(self) -> dict[int, uuid.UUID]:
        claims: dict[int, list[uuid.UUID]] = {}
        for table in self._routes.tables.values():
            if table.port is not None:
                claims.setdefault(table.port, []).append(table.endpoint_id)
        desired: dict[int, uuid.UUID] = {}
        for port, endpoints in claims.items():
            bound = self._sites.get(port)
            if bound is not None and bound[0] in endpoints:
                winner = bound[0]
            else:
                winner = min(endpoints)
            desired[port] = winner
        self._conflicts = log_new_conflicts(claims, desired, self._conflicts, "port")
        return desired

    async def _reconcile(self) -> None:
        desired = self._desired()
        for port, (endpoint_id, site) in list(self._sites.items()):
            if desired.get(port) == endpoint_id:
                continue
            del self._sites[port]
            self._port_map.pop(port, None)
            site.close()
            self._close_connections(port)
            log.info("endpoint %s: port %d closed", endpoint_id, port)
        for port in [p for p in self._bind_errors if p not in desired]:
            del self._bind_errors[port]
        for port, endpoint_id in desired.items():
            if port in self._sites:
                continue
            try:
                site = await self._server.listen(self._cfg.bind_host, port, reuse_port=self._reuse_port)
            except OSError as exc:
                message = exc.strerror or str(exc)
                if self._bind_errors.get(port) != message:
                    log.error("endpoint %s: cannot listen on %s:%d (%s); retrying every %.0fs", endpoint_id,
                              self._cfg.bind_host, port, message, self._cfg.bind_retry_interval)
                self._bind_errors[port] = message
                continue
            self._sites[port] = (endpoint_id, site)
            self._port_map[port] = endpoint_id
            if self._bind_errors.pop(port, None) is not None:
                log.info("endpoint %s: port %d is free again", endpoint_id, port)
            log.info("endpoint %s: listening on %s:%d", endpoint_id, self._cfg.bind_host, port)

    def _close_connections(self, port: int) -> None:
        """Close connections accepted on a port we stopped serving (after their current request)."""
        for conn in list(self._server.connections):
            sockname = conn.sockname
            if isinstance(sockname, tuple) and len(sockname) >= 2 and sockname[1] == port:
                conn.close()  # after the request in progress, at once when idle

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse | SizedResponse:
        port = local_port(request)
        endpoint_id = self._port_map.get(port) if port is not None else None
        if endpoint_id is None:
            return EndpointNotFound("No endpoint is served on this port.").to_response()
        return await self._handler(request, endpoint_id)

    def _fast(self, conn: HttpConnection, message: RawRequestMessage, payload: StreamReader) -> bool:
        sockname = conn.sockname
        endpoint_id = self._port_map.get(sockname[1]) if isinstance(sockname, tuple) else None
        fast = self._fast_handler  # set whenever this method is installed
        return endpoint_id is not None and fast is not None and fast(conn, message, payload, endpoint_id)


Frontend = PortFrontend | WildcardFrontend


def make_frontend(config: ProxySection, routes: RouteCache, handler: Handler, *, reuse_port: bool = False,
                  fast: FastHandler | None = None, ssl_context: ssl.SSLContext | None = None) -> Frontend:
    """``ssl_context``: HTTPS on the endpoints' listeners (``[proxy] tls_cert_file``)."""
    cls = WildcardFrontend if config.frontend == "wildcard" else PortFrontend
    return cls(config, routes, handler, reuse_port=reuse_port, fast=fast, ssl_context=ssl_context)
