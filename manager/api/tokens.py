"""Endpoint API tokens: ``POST /services/{id}/token`` (Backend.AI) plus our extension to list and revoke them.

Tokens are HS256 JWTs bound to the endpoint (the rules: manager/services/tokens.py). Only the id (jti) and the
expiry are stored. Revoking publishes the endpoint's route table at once, so the app proxies refuse the token
within a second.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from aiohttp import web

from manager.api.auth import caller_of
from manager.api.schemas import TokenRequest
from manager.api.util import json_response, parse_body, parse_uuid, service_ref
from manager.api.views.token import issued_token, token_info
from manager.context import CTX
from manager.control.publisher import publish_endpoints
from manager.services import tokens

routes = web.RouteTableDef()


@routes.post("/services/{service_id}/token")
async def generate_token(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    body = await parse_body(request, TokenRequest)
    now = time.time()
    expires_at = tokens.token_expiry(body.duration, body.valid_until, now,
                                     ctx.config.limits.max_token_lifetime_seconds)
    issued = await tokens.issue_token(ctx.db, ctx.jwt_secret, caller_of(request), *service_ref(request),
                                      expires_at=expires_at, now=now)
    return json_response(issued_token(issued))


@routes.get("/services/{service_id}/tokens")
async def list_tokens(request: web.Request) -> web.Response:
    now = datetime.now(UTC)
    stored = await tokens.list_tokens(request.app[CTX].db, caller_of(request), *service_ref(request))
    return json_response({"tokens": [token_info(t, now) for t in stored]})


@routes.delete("/services/{service_id}/tokens/{token_id}")
async def revoke_token(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    token_id = parse_uuid(request.match_info["token_id"], "token_id")
    endpoint_id = await tokens.revoke_token(ctx.db, caller_of(request), *service_ref(request), token_id=token_id)
    await publish_endpoints(ctx, {endpoint_id})
    ctx.poke(endpoint_id)  # on a follower: the leader republishes too, so the newest table wins
    return json_response({"success": True})
