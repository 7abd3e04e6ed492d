"""A token on the wire: REST ``TokenResponse`` (once, at issue) and ``TokenInfo`` (the list)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from manager.api.schemas import TokenInfo, TokenResponse
from manager.db.models import EndpointToken
from manager.services.tokens import IssuedToken, aware


def issued_token(issued: IssuedToken) -> dict[str, Any]:
    return TokenResponse(token=issued.token, token_id=issued.token_id,
                         expires_at=issued.expires_at.isoformat()).model_dump(mode="json")


def token_info(token: EndpointToken, now: datetime) -> dict[str, Any]:
    """A stored token as listed: never the token itself (it is not stored), whether it is revoked or expired."""
    expires_at = aware(token.expires_at)
    return TokenInfo(token_id=token.id, created_at=aware(token.created_at).isoformat(),
                     expires_at=expires_at.isoformat(), revoked=token.revoked_at is not None,
                     expired=expires_at <= now).model_dump(mode="json")
