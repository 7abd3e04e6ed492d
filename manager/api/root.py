"""Unauthenticated version probe and small informational routes."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from manager import __version__
from manager.api.util import json_response
from manager.hmac_auth import API_VERSION

routes = web.RouteTableDef()


@routes.get("/")
async def version(request: web.Request) -> web.Response:
    return json_response({"version": API_VERSION, "manager": __version__})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition of this manager's process: the control loop's phases, counts and leader state
    (manager.control.metrics). Unauthenticated, like every scrape target; it carries counts, no names or ids."""
    body = generate_latest()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@routes.get("/manager/announcement")
async def announcement(request: web.Request) -> web.Response:
    return json_response({"enabled": False, "message": ""})
