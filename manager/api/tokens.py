"""Endpoint API tokens: ``POST /services/{id}/token`` (Backend.AI) plus our extension to list and revoke them.

Tokens are HS256 JWTs bound to the endpoint (see :mod:`common.tokens`). Only the id (jti) and the expiry are
stored. Revoking publishes the endpoint's route table at once, so the app proxies refuse the token within a
second.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from aiohttp import web

from common.errors import InvalidAPIParameters, ObjectNotFound
from common.tokens import mint_endpoint_token
from manager.api.auth import caller_of
from manager.api.schemas import TokenInfo, TokenRequest, TokenResponse
from manager.api.services import load_endpoint
from manager.api.util import json_response, parse_body, parse_uuid
from manager.context import CTX
from manager.control.publisher import publish_endpoints
from manager.db.models import EndpointToken, Event
from manager.durations import parse_duration

routes = web.RouteTableDef()


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@routes.post("/services/{service_id}/token")
async def generate_token(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    body = await parse_body(request, TokenRequest)
    now = time.time()
    if body.valid_until is not None:
        expires_at, field = float(body.valid_until), "valid_until"
    elif body.duration is not None:
        try:
            expires_at, field = now + parse_duration(body.duration), "duration"
        except ValueError as exc:
            raise InvalidAPIParameters(f"duration: {exc}") from None
    else:
        raise InvalidAPIParameters("duration: either duration or valid_until is required")
    if expires_at <= now:
        raise InvalidAPIParameters(f"{field}: the expiry must lie in the future")
    if expires_at - now > ctx.config.limits.max_token_lifetime_seconds:
        raise InvalidAPIParameters(f"{field}: at most {ctx.config.limits.max_token_lifetime_seconds} seconds")
    async with ctx.db() as db:
        endpoint = await load_endpoint(db, caller_of(request), request.match_info["service_id"])
        token_id = uuid.uuid4()
        token, _ = mint_endpoint_token(ctx.jwt_secret, endpoint.id, endpoint.owner_id, expires_at, token_id, now)
        db.add(EndpointToken(id=token_id, endpoint_id=endpoint.id, owner_id=endpoint.owner_id,
                             expires_at=_utc(expires_at)))
        await db.commit()
    return json_response(TokenResponse(token=token, token_id=token_id,
                                       expires_at=_utc(expires_at).isoformat()).model_dump(mode="json"))


@routes.get("/services/{service_id}/tokens")
async def list_tokens(request: web.Request) -> web.Response:
    now = datetime.now(UTC)
    async with request.app[CTX].db() as db:
        endpoint = await load_endpoint(db, caller_of(request), request.match_info["service_id"])
        rows = (await db.execute(sa.select(EndpointToken).where(EndpointToken.endpoint_id == endpoint.id)
                                 .order_by(EndpointToken.created_at).limit(1000))).scalars()
        tokens = [TokenInfo(token_id=t.id, created_at=_aware(t.created_at).isoformat(),
                            expires_at=_aware(t.expires_at).isoformat(), revoked=t.revoked_at is not None,
                            expired=_aware(t.expires_at) <= now).model_dump(mode="json") for t in rows]
    return json_response({"tokens": tokens})


@routes.delete("/services/{service_id}/tokens/{token_id}")
async def revoke_token(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    token_id = parse_uuid(request.match_info["token_id"], "token_id")
    async with ctx.db() as db:
        endpoint = await load_endpoint(db, caller_of(request), request.match_info["service_id"])
        token = await db.get(EndpointToken, token_id)
        if token is None or token.endpoint_id != endpoint.id:
            raise ObjectNotFound(f"token {token_id} not found")
        if token.revoked_at is None:
            token.revoked_at = datetime.now(UTC)
            db.add(Event(endpoint_id=endpoint.id, kind="token_revoked", data={"token_id": str(token_id)}))
            await db.commit()
    await publish_endpoints(ctx, {endpoint.id})
    ctx.poke(endpoint.id)  # on a follower: the leader republishes too, so the newest table wins
    return json_response({"success": True})
