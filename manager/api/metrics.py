"""``GET /services/{service_id}/metrics`` (our extension): a service's live traffic and replica metrics, as the
app proxies see them now (what the autoscaler reads: manager/control/autoscale.py). The console samples it to draw
its charts (docs/console.md). Ownership is checked like every ``/services/{id}`` route."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel

from manager.api.auth import caller_of
from manager.api.services import load_endpoint
from manager.api.util import json_response
from manager.context import CTX
from manager.control.autoscale import Autoscaling

routes = web.RouteTableDef()


class LatencyHistogram(BaseModel):
    bounds: list[float]
    counts: list[int]
    sum: float


class ServiceMetrics(BaseModel):
    endpoint_id: str
    proxies: int  # app proxies that reported the service
    collected_at: float | None  # when the freshest replica scrape was taken (unix seconds)
    rps: float  # requests per second, all proxies together
    in_flight: int  # requests in flight, all proxies together
    scraped_replicas: int  # replicas whose /metrics the freshest report covers
    metrics: dict[str, float]  # replica metrics summed over replicas (e.g. llamacpp:tokens_predicted_total)
    # request durations since each proxy started, all proxies together: bucket upper bounds (s), counts per bucket
    # (not cumulative; one more than bounds, the last above the highest bound), sum (s); None: no proxy reported
    latency: LatencyHistogram | None = None
    tokens: dict[str, int] = {}  # prompt / completion tokens the gateway metered, all proxies together


MAX_BUCKETS = 64  # a proxy's report is trusted but bounded: appproxy.metrics.BUCKETS has 17


def merge_latency(reports: list[dict[str, Any]]) -> LatencyHistogram | None:
    """Add up the proxies' histograms that share the first one's bounds (a proxy of another version with other
    bounds is left out rather than mixed in)."""
    merged: LatencyHistogram | None = None
    for report in reports:
        hist = (report.get("proxy") or {}).get("latency")
        if not isinstance(hist, dict):
            continue
        try:
            one = LatencyHistogram.model_validate(hist)
        except ValueError:
            continue
        if len(one.counts) != len(one.bounds) + 1 or len(one.bounds) > MAX_BUCKETS:
            continue
        if merged is None:
            merged = one
        elif merged.bounds == one.bounds:
            merged = LatencyHistogram(bounds=merged.bounds, sum=merged.sum + one.sum,
                                      counts=[a + b for a, b in zip(merged.counts, one.counts, strict=True)])
    return merged


def merge_tokens(reports: list[dict[str, Any]]) -> dict[str, int]:
    out = {"prompt": 0, "completion": 0}
    for report in reports:
        tokens = (report.get("proxy") or {}).get("tokens")
        if isinstance(tokens, dict):
            for kind in out:
                value = tokens.get(kind)
                if isinstance(value, int) and value >= 0:
                    out[kind] += value
    return out


def merge_reports(endpoint_id: str, reports: list[dict[str, Any]]) -> ServiceMetrics:
    """Traffic adds up over proxies (each counts its own requests); replica metrics are the same replicas seen by
    every proxy, so they come from the freshest report alone."""
    freshest = max(reports, key=lambda r: r.get("collected_at") or 0, default=None)
    metrics: dict[str, float] = {}
    if freshest is not None:
        for name, entry in (freshest.get("metrics") or {}).items():
            if isinstance(entry, dict) and isinstance(entry.get("sum"), (int, float)):
                metrics[str(name)] = float(entry["sum"])
    return ServiceMetrics(
        endpoint_id=endpoint_id, proxies=len(reports),
        collected_at=freshest.get("collected_at") if freshest is not None else None,
        rps=round(sum(float((r.get("proxy") or {}).get("rps") or 0) for r in reports), 3),
        in_flight=sum(int((r.get("proxy") or {}).get("in_flight") or 0) for r in reports),
        scraped_replicas=int(freshest.get("replicas") or 0) if freshest is not None else 0, metrics=metrics,
        latency=merge_latency(reports), tokens=merge_tokens(reports))


@routes.get("/services/{service_id}/metrics")
async def service_metrics(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    async with ctx.db() as db:
        endpoint = await load_endpoint(db, caller_of(request), request.match_info["service_id"])
    # the autoscaler's proxy client (one proxy's failure leaves it out; a bounded timeout per proxy)
    reports = (await Autoscaling(ctx).proxy_reports([endpoint.id])).get(endpoint.id, [])
    return json_response(merge_reports(str(endpoint.id), reports).model_dump(mode="json"))
