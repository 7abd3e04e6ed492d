"""Endpoint token check at the proxy, plus revocation (docs/architecture.md, App proxy data path).

Unless the endpoint is ``open_to_public``, a request must carry ``Authorization: BackendAI <token>`` or
``Authorization: Bearer <token>`` (scheme case-insensitive). The token is an HS256 JWT minted by the manager
(:mod:`common.tokens`), bound to the endpoint id, not expired, and whose id is not in the table's
``revoked_token_ids``. Failures are 401 RFC 7807 documents with ``WWW-Authenticate: Bearer`` (RFC 6750).

Every method needs a token, ``OPTIONS`` included. A CORS pre-flight never gets here: the proxy answers it itself
and never forwards it (:mod:`appproxy.cors`); letting it through without a token, as Backend.AI does, handed an
unauthenticated request, body and all, to a private replica.

Verified tokens are cached (:class:`TokenCache`, bounded LRU keyed by the token string and endpoint): a cache
hit skips the HMAC and JSON decoding but still checks expiry and revocation against the current table on every
request, so a revoked token is refused as soon as the table says so. Only successes are cached.

Tokens are never logged, and the ``Authorization`` header is stripped before forwarding (see
:mod:`appproxy.forward`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
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


class TokenCache:
    """Verified tokens by ``(token, endpoint id)``, least recently used dropped beyond ``size`` entries."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._tokens: OrderedDict[tuple[str, object], EndpointToken] = OrderedDict()

    def get(self, token: str, endpoint_id: object) -> EndpointToken | None:
        key = (token, endpoint_id)
        verified = self._tokens.get(key)
        if verified is not None:
            self._tokens.move_to_end(key)
        return verified

    def put(self, token: str, endpoint_id: object, verified: EndpointToken) -> None:
        self._tokens[(token, endpoint_id)] = verified
        if len(self._tokens) > self.size:
            self._tokens.popitem(last=False)

    def discard(self, token: str, endpoint_id: object) -> None:
        self._tokens.pop((token, endpoint_id), None)


def authenticate(secret: str, table: RouteTable, headers: Mapping[str, str],
                 cache: TokenCache | None = None) -> EndpointToken | None:
    """Return the verified token, or None when the request needs none; raise :class:`EndpointAuthFailed`."""
    if table.open_to_public:
        return None
    token = extract_token(headers.get("Authorization"))
    if cache is not None and (verified := cache.get(token, table.endpoint_id)) is not None:
        # the signature, issuer and endpoint binding were checked when it was cached; expiry and revocation
        # can change, so they are checked again (as PyJWT does: expired once exp <= now)
        if verified.expires_at <= time.time():
            cache.discard(token, table.endpoint_id)
            raise EndpointAuthFailed("Endpoint token refused: token expired.")
        if verified.token_id in table.revoked_token_ids:
            raise EndpointAuthFailed("Endpoint token refused: token revoked.")
        return verified
    try:
        verified = verify_endpoint_token(secret, token, table.endpoint_id, revoked=set(table.revoked_token_ids))
    except TokenInvalid as exc:
        raise EndpointAuthFailed(f"Endpoint token refused: {exc}.") from None
    if cache is not None:
        cache.put(token, table.endpoint_id, verified)
    return verified
