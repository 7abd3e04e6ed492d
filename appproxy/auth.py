"""Endpoint token check at the proxy (reference §6.3, plus revocation).

Unless the endpoint is ``open_to_public``, a request must carry ``Authorization: BackendAI <token>`` or
``Authorization: Bearer <token>`` (scheme case-insensitive). The token is an HS256 JWT minted by the manager
(:mod:`common.tokens`), bound to the endpoint id, not expired, and whose id is not in the table's
``revoked_token_ids``. Failures are 401 RFC 7807 documents with ``WWW-Authenticate: Bearer`` (RFC 6750).

A CORS pre-flight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) passes without a token,
as in Backend.AI: browsers never send credentials on a pre-flight. Any other ``OPTIONS`` needs a token.

Tokens are never logged, and the ``Authorization`` header is stripped before forwarding (see
:mod:`appproxy.forward`).
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from common.errors import AuthFailed
from common.protocol import RouteTable
from common.tokens import EndpointToken, TokenInvalid, verify_endpoint_token

SCHEMES = frozenset({"bearer", "backendai"})
REALM = "moorage"


class EndpointAuthFailed(AuthFailed):
    """401 for a missing or refused endpoint token. ``error`` is the RFC 6750 error code (None when absent)."""

    title = "Endpoint token missing or invalid."

    def __init__(self, detail: str, *, error: str | None = "invalid_token") -> None:
        super().__init__(detail)
        self.error = error

    def www_authenticate(self) -> str:
        value = f'Bearer realm="{REALM}"'
        if self.error:
            value += f', error="{self.error}", error_description="{self.detail}"'
        return value

    def to_response(self) -> web.Response:
        response = super().to_response()
        response.headers["WWW-Authenticate"] = self.www_authenticate()
        return response


def is_cors_preflight(method: str, headers: Mapping[str, str]) -> bool:
    return method == "OPTIONS" and "Origin" in headers and "Access-Control-Request-Method" in headers


def extract_token(authorization: str | None) -> str:
    if not authorization or not authorization.strip():
        raise EndpointAuthFailed("Authorization header not provided; send 'Authorization: Bearer <token>'.",
                                 error=None)
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() not in SCHEMES:
        raise EndpointAuthFailed("Unsupported authorization scheme; use 'Bearer <token>' or 'BackendAI <token>'.",
                                 error="invalid_request")
    token = token.strip()
    if not token:
        raise EndpointAuthFailed("Empty token in the Authorization header.", error="invalid_request")
    return token


def authenticate(secret: str, table: RouteTable, method: str, headers: Mapping[str, str]
                 ) -> EndpointToken | None:
    """Return the verified token, or None when the request needs none; raise :class:`EndpointAuthFailed`."""
    if table.open_to_public or is_cors_preflight(method, headers):
        return None
    token = extract_token(headers.get("Authorization"))
    try:
        return verify_endpoint_token(secret, token, table.endpoint_id, revoked=set(table.revoked_token_ids))
    except TokenInvalid as exc:
        raise EndpointAuthFailed(f"Endpoint token refused: {exc}.") from None
