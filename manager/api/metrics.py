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


class ServiceMetrics(BaseModel):
    endpoint_id: str
    proxies: int  # app proxies that reported the service
    collected_at: float | None  # when the freshest replica scrape was taken (unix seconds)
    rps: float  # requests per second, all proxies together
    in_flight: int  # requests in flight, all proxies together
    scraped_replicas: int  # replicas whose /metrics the freshest report covers
    metrics: dict[str, float]  # replica metrics summed over replicas (e.g. llamacpp:tokens_predicted_total)


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
        scraped_replicas=int(freshest.get("replicas") or 0) if freshest is not None else 0, metrics=metrics)


@routes.get("/services/{service_id}/metrics")
async def service_metrics(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    async with ctx.db() as db:
        endpoint = await load_endpoint(db, caller_of(request), request.match_info["service_id"])
    # the autoscaler's proxy client (one proxy's failure leaves it out; a bounded timeout per proxy)
    reports = (await Autoscaling(ctx).proxy_reports([endpoint.id])).get(endpoint.id, [])
    return json_response(merge_reports(str(endpoint.id), reports).model_dump(mode="json"))
