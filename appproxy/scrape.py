"""Replica metrics for autoscaling: scrape each healthy route's ``/metrics``, aggregate per endpoint.

Every ``scrape_interval`` seconds the proxy fetches ``scrape_path`` from every route of every table that is not
currently ejected (the manager only publishes running, healthy routes), each fetch bounded by ``scrape_timeout``
and ``scrape_max_bytes``. The Prometheus text is reduced to ``sample name → value`` per route: samples of the
same name with different labels are summed (vLLM labels everything with ``model_name``); histogram buckets,
``_created`` samples and summary quantiles are dropped, histogram/summary ``_sum``/``_count`` are kept. Per
endpoint each name gets the sum over routes and the per-route values. A route whose scrape fails is simply
absent from that round (``replicas`` counts the routes that answered): stale numbers would mislead an
autoscaler more than missing ones.

The same tick computes the proxy's own request rate per endpoint (responses per second since the last tick).

The parser is a small line scanner rather than ``prometheus_client.parser``: it runs on the proxy's event loop,
and for a vLLM-sized exposition (~100 KB) it is several times faster.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from appproxy.config import ProxySection
from appproxy.forward import Forwarder
from appproxy.metrics import ProxyMetrics
from appproxy.routing import RouteCache
from common.aio import cancel_and_wait
from common.protocol import RouteTarget

log = logging.getLogger(__name__)

_SKIPPED_SUFFIXES = ("_bucket", "_created")


class ScrapeTooLarge(Exception):
    pass


def parse_exposition(text: str, max_series: int = 2000) -> dict[str, float]:
    """``sample name → value`` summed over label sets (see the module docstring for what is kept)."""
    types: dict[str, str] = {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            if line.startswith("# TYPE "):
                parts = line.split()
                if len(parts) >= 4:
                    types[parts[2]] = parts[3]
            continue
        brace = line.find("{")
        if brace >= 0:
            name = line[:brace].strip()
            close = line.rfind("}")
            rest = line[close + 1:].split() if close > brace else []
        else:
            parts = line.split()
            name, rest = (parts[0], parts[1:]) if parts else ("", [])
        if not name or not rest or name.endswith(_SKIPPED_SUFFIXES) or types.get(name) == "summary":
            continue
        try:
            value = float(rest[0])
        except ValueError:
            continue
        if math.isnan(value) or math.isinf(value):
            continue
        if name not in out:
            if len(out) >= max_series:
                continue
            out[name] = value
        else:
            out[name] += value
    return out


@dataclass(slots=True)
class EndpointSample:
    collected_at: float
    per_route: dict[str, dict[str, float]] = field(default_factory=dict)  # route id → name → value


class ReplicaScraper:
    CONCURRENCY = 32  # scrapes in progress at once, over all endpoints

    def __init__(self, cfg: ProxySection, routes: RouteCache, forwarder: Forwarder, metrics: ProxyMetrics) -> None:
        self._cfg = cfg
        self._routes = routes
        self._forwarder = forwarder
        self._metrics = metrics
        self.samples: dict[uuid.UUID, EndpointSample] = {}
        self.rps: dict[str, float] = {}
        self._last_counts: tuple[float, dict[str, int]] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._sem = asyncio.Semaphore(self.CONCURRENCY)
        # the gateway's (requests queued, oldest wait in seconds) for an endpoint, when this proxy has a gateway
        self.queue_stats: Callable[[uuid.UUID], tuple[int, float]] | None = None

    async def start(self) -> None:
        if self._task is not None:
            return
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.CONCURRENCY, force_close=True),
            timeout=aiohttp.ClientTimeout(total=self._cfg.scrape_timeout),
            cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)
        self._task = asyncio.create_task(self._run(), name="appproxy-replica-scraper")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let a bad exporter stop the scraping of the others
                log.exception("replica metrics scrape round failed")
            await asyncio.sleep(max(0.0, self._cfg.scrape_interval - (time.monotonic() - started)))

    async def tick(self) -> None:
        self._update_rps()
        now = time.monotonic()
        tables = list(self._routes.tables.values())
        jobs: list[tuple[uuid.UUID, RouteTarget]] = [
            (t.endpoint_id, r) for t in tables for r in t.routes
            if not self._forwarder.outliers.is_ejected(Forwarder.key(r), now)]
        results = await asyncio.gather(*(self._scrape(r) for _, r in jobs))
        collected_at = time.time()
        samples = {t.endpoint_id: EndpointSample(collected_at) for t in tables}
        for (endpoint_id, route), values in zip(jobs, results, strict=True):
            if values is not None:
                samples[endpoint_id].per_route[str(route.route_id)] = values
        self.samples = samples

    def _update_rps(self) -> None:
        now = time.monotonic()
        counts = self._metrics.requests_by_endpoint()
        if self._last_counts is not None:
            then, before = self._last_counts
            elapsed = max(now - then, 1e-6)
            self.rps = {e: max(0, n - before.get(e, 0)) / elapsed for e, n in counts.items()}
        self._last_counts = (now, dict(counts))

    async def _scrape(self, route: RouteTarget) -> dict[str, float] | None:
        assert self._session is not None
        host = f"[{route.host}]" if ":" in route.host and not route.host.startswith("[") else route.host
        url = f"http://{host}:{route.port}{self._cfg.scrape_path}"
        limit = self._cfg.scrape_max_bytes
        async with self._sem:
            try:
                async with self._session.get(url, allow_redirects=False) as resp:
                    if resp.status != 200:
                        raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status)
                    if (resp.content_length or 0) > limit:
                        raise ScrapeTooLarge(f"{resp.content_length} bytes")
                    body = bytearray()
                    while chunk := await resp.content.readany():
                        body += chunk
                        if len(body) > limit:
                            raise ScrapeTooLarge(f"over {limit} bytes")
                    charset = resp.charset or "utf-8"
            except (aiohttp.ClientError, TimeoutError, ScrapeTooLarge, OSError) as exc:
                log.debug("scraping %s failed: %s: %s", url, type(exc).__name__, exc)
                return None
        return parse_exposition(body.decode(charset, errors="replace"), self._cfg.scrape_max_series)

    def report(self, endpoint_id: uuid.UUID, in_flight: int) -> dict[str, Any]:
        """The JSON document of ``GET /endpoints/{endpoint_id}/metrics``."""
        sample = self.samples.get(endpoint_id)
        metrics: dict[str, dict[str, Any]] = {}
        if sample is not None:
            for route_id, values in sample.per_route.items():
                for name, value in values.items():
                    entry = metrics.setdefault(name, {"sum": 0.0, "per_route": {}})
                    entry["sum"] += value
                    entry["per_route"][route_id] = value
        queued, queue_wait = self.queue_stats(endpoint_id) if self.queue_stats is not None else (0, 0.0)
        return {
            "endpoint_id": str(endpoint_id),
            "collected_at": sample.collected_at if sample is not None else None,
            "replicas": len(sample.per_route) if sample is not None else 0,
            "metrics": metrics,
            "proxy": {"rps": round(self.rps.get(str(endpoint_id), 0.0), 3), "in_flight": in_flight,
                      "queued": queued, "queue_wait": round(queue_wait, 3),
                      "latency": self._metrics.endpoint_latency(str(endpoint_id)),
                      "tokens": self._metrics.endpoint_tokens(str(endpoint_id))},
        }
