"""Endpoint API tokens: issue, list, revoke (HS256 JWTs bound to the endpoint, see :mod:`common.tokens`).

Only a token's id (jti) and expiry are stored. After a revocation the caller republishes the endpoint's route
table, so the app proxies refuse the token within a second.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime

import sqlalchemy as sa

from common.errors import InvalidAPIParameters, ObjectNotFound
from common.tokens import mint_endpoint_token
from manager.db.models import EndpointToken, Event
from manager.durations import parse_duration
from manager.ownership import Caller
from manager.services.read import Sessions, load_endpoint

MAX_LISTED_TOKENS = 1000  # GET .../tokens answers at most this many (oldest first)


@dataclasses.dataclass(frozen=True)
class IssuedToken:
    token: str  # shown once, never stored
    token_id: uuid.UUID
    expires_at: datetime


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def aware(value: datetime) -> datetime:
    """A stored timestamp as UTC (SQLite gives them back naive)."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def token_expiry(duration: int | float | str | None, valid_until: int | None, now: float, max_lifetime: int
                 ) -> float:
    """When a new token expires (seconds since 1970): ``valid_until``, else ``now + duration``; 400 naming the
    field when neither is given, the expiry is past, or the lifetime exceeds ``max_lifetime`` seconds."""
    if valid_until is not None:
        expires_at, field = float(valid_until), "valid_until"
    elif duration is not None:
        try:
            expires_at, field = now + parse_duration(duration), "duration"
        except ValueError as exc:
            raise InvalidAPIParameters(f"duration: {exc}") from None
    else:
        raise InvalidAPIParameters("duration: either duration or valid_until is required")
    if expires_at <= now:
        raise InvalidAPIParameters(f"{field}: the expiry must lie in the future")
    if expires_at - now > max_lifetime:
        raise InvalidAPIParameters(f"{field}: at most {max_lifetime} seconds")
    return expires_at


async def issue_token(sessions: Sessions, jwt_secret: str, caller: Caller, endpoint_id: uuid.UUID,
                      shown: str | None = None, *, expires_at: float, now: float) -> IssuedToken:
    """A new token of the endpoint, expiring at ``expires_at`` (from :func:`token_expiry`)."""
    async with sessions() as db:
        endpoint = await load_endpoint(db, caller, endpoint_id, shown)
        token_id = uuid.uuid4()
        token, _ = mint_endpoint_token(jwt_secret, endpoint.id, endpoint.owner_id, expires_at, token_id, now)
        db.add(EndpointToken(id=token_id, endpoint_id=endpoint.id, owner_id=endpoint.owner_id,
                             expires_at=utc(expires_at)))
        await db.commit()
    return IssuedToken(token, token_id, utc(expires_at))


async def list_tokens(sessions: Sessions, caller: Caller, endpoint_id: uuid.UUID, shown: str | None = None
                      ) -> list[EndpointToken]:
    async with sessions() as db:
        endpoint = await load_endpoint(db, caller, endpoint_id, shown)
        return list((await db.execute(sa.select(EndpointToken).where(EndpointToken.endpoint_id == endpoint.id)
                                      .order_by(EndpointToken.created_at).limit(MAX_LISTED_TOKENS))).scalars())


async def revoke_token(sessions: Sessions, caller: Caller, endpoint_id: uuid.UUID, shown: str | None = None, *,
                       token_id: uuid.UUID) -> uuid.UUID:
    """Mark the token revoked (again: no-op). Returns the endpoint id, whose route table must be republished."""
    async with sessions() as db:
        endpoint = await load_endpoint(db, caller, endpoint_id, shown)
        token = await db.get(EndpointToken, token_id)
        if token is None or token.endpoint_id != endpoint.id:
            raise ObjectNotFound(f"token {token_id} not found")
        if token.revoked_at is None:
            token.revoked_at = datetime.now(UTC)
            db.add(Event(endpoint_id=endpoint.id, kind="token_revoked", data={"token_id": str(token_id)}))
            await db.commit()
        return endpoint.id
