"""Endpoint API tokens: HS256 JWTs bound to one endpoint, minted by the manager, verified by the app proxy.

Claims: ``jti`` (token id, revocable), ``endpoint_id``, ``sub`` (owner user id), ``iat``, ``exp`` (required).
The signing secret is shared by manager and app proxies only (``jwt_secret`` in their configs).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import jwt

ALGORITHM = "HS256"
ISSUER = "moorage"
MAX_TOKEN_BYTES = 4096  # bounds what the proxy will try to parse


class TokenInvalid(Exception):
    """Why a token was refused (the message is safe to show to the caller)."""


@dataclass(frozen=True, slots=True)
class EndpointToken:
    token_id: str
    endpoint_id: str
    owner: str
    expires_at: float


def mint_endpoint_token(secret: str, endpoint_id: uuid.UUID | str, owner: uuid.UUID | str, expires_at: float,
                        token_id: uuid.UUID | str | None = None, now: float | None = None) -> tuple[str, str]:
    """Return ``(jwt, token_id)``."""
    jti = str(token_id or uuid.uuid4())
    payload = {
        "jti": jti,
        "iss": ISSUER,
        "endpoint_id": str(endpoint_id),
        "sub": str(owner),
        "iat": int(now if now is not None else time.time()),
        "exp": int(expires_at),
    }
    return jwt.encode(payload, secret, algorithm=ALGORITHM), jti


def verify_endpoint_token(secret: str, token: str, endpoint_id: uuid.UUID | str,
                          revoked: frozenset[str] | set[str] = frozenset()) -> EndpointToken:
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenInvalid("token too long")
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], issuer=ISSUER,
                            options={"require": ["exp", "jti", "endpoint_id", "iss"]})
    except jwt.ExpiredSignatureError:
        raise TokenInvalid("token expired") from None
    except jwt.PyJWTError:
        raise TokenInvalid("invalid token") from None
    if claims.get("endpoint_id") != str(endpoint_id):
        raise TokenInvalid("token is not valid for this endpoint")
    if claims["jti"] in revoked:
        raise TokenInvalid("token revoked")
    return EndpointToken(claims["jti"], claims["endpoint_id"], str(claims.get("sub", "")), float(claims["exp"]))
