"""Unauthenticated version probe and small informational routes."""

from __future__ import annotations

from aiohttp import web

from manager import __version__
from manager.api.util import json_response
from manager.hmac_auth import API_VERSION

routes = web.RouteTableDef()


@routes.get("/")
async def version(request: web.Request) -> web.Response:
    return json_response({"version": API_VERSION, "manager": __version__})


@routes.get("/manager/announcement")
async def announcement(request: web.Request) -> web.Response:
    return json_response({"enabled": False, "message": ""})
