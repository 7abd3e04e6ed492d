"""The admin listener (``[proxy] admin_host/admin_port``): Prometheus exposition and the manager's JSON API.

* ``GET /metrics`` — the proxy's own metrics (:mod:`appproxy.metrics`), Prometheus text format. Served without
  authentication, like every exporter: bind the admin listener to a private address.
* ``GET /endpoints/{endpoint_id}/metrics`` — replica metrics aggregated for autoscaling
  (:meth:`appproxy.scrape.ReplicaScraper.report`). Like every route other than ``/metrics`` it requires the
  cluster's signed-request scheme (:mod:`common.signing`, ``[secrets] cluster_secret``); unsigned → 401.
  Unknown endpoint → 404.
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from appproxy.errors import EndpointNotFound
from appproxy.scrape import ReplicaScraper
from common.errors import InvalidAPIParameters, problem_middleware
from common.signing import signed_request_middleware

OPEN_PATHS = frozenset({"/metrics"})


def _signed_except_open(secret: str) -> Any:
    signed = signed_request_middleware(secret)

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request) if request.path in OPEN_PATHS else await signed(
            request, handler)
        return response

    return middleware


class AdminServer:
    def __init__(self, host: str, port: int, secret: str, registry: CollectorRegistry, scraper: ReplicaScraper,
                 known: Callable[[uuid.UUID], bool], in_flight: Callable[[str], int],
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._host, self._port = host, port
        self.ssl_context = ssl_context  # HTTPS ([proxy] tls_cert_file), like the endpoints' listeners
        self._registry = registry
        self._scraper = scraper
        self._known = known
        self._in_flight = in_flight
        app = web.Application(middlewares=[problem_middleware, _signed_except_open(secret)],
                              client_max_size=64 * 1024)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/endpoints/{endpoint_id}/metrics", self._endpoint_metrics)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        self.port: int | None = None  # the bound port, once started

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True, ssl_context=self.ssl_context)
        await site.start()
        server = site._server  # the real port when 0 was asked for
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _endpoint_metrics(self, request: web.Request) -> web.Response:
        try:
            endpoint_id = uuid.UUID(request.match_info["endpoint_id"])
        except ValueError:
            raise InvalidAPIParameters("endpoint_id: not a UUID") from None
        if not self._known(endpoint_id):
            raise EndpointNotFound(f"No endpoint {endpoint_id} is served by this proxy.")
        return web.json_response(self._scraper.report(endpoint_id, self._in_flight(str(endpoint_id))))
