"""Keypair authentication of the public API (docs/architecture.md, Service API); who may act for whom is
:mod:`manager.ownership`.

Every request except the version probe (``GET /``), ``/openapi.json`` and the cluster-signed ``/internal/``
routes must carry a valid HMAC signature by an active keypair of an active user, with a Date within
``auth.clock_skew`` (default 5 minutes), and each signature is accepted once (``ctx.replay``: remembered for the
rest of that window by this manager). A request with ``X-Moorage-Content-SHA256`` has that hash signed and checked
against its body (manager/hmac_auth.py).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import jwt
import sqlalchemy as sa
from aiohttp import web
from aiohttp.typedefs import Handler

from common.errors import AuthFailed
from manager import hmac_auth
from manager.api.util import read_hashed_body
from manager.context import CTX
from manager.db.models import KeyPair, User
from manager.ownership import Caller
from manager.secretbox import SecretBoxError

log = logging.getLogger(__name__)
KeypairRow = sa.Row[KeyPair, User]  # a keypair joined with its user
PUBLIC_PATHS = frozenset({"/", "/openapi.json", "/metrics"})
# Verified against when the access key is unknown, so that timing does not reveal which access keys exist; such
# requests are refused whatever the signature.
UNKNOWN_KEY_SECRET = "x" * 40
INTERNAL_PREFIX = "/internal/"


async def _load_keypair(request: web.Request, access_key: str) -> KeypairRow | None:
    async with request.app[CTX].db() as db:
        return (await db.execute(
            sa.select(KeyPair, User).join(User, User.id == KeyPair.user_id).where(KeyPair.access_key == access_key)
        )).first()


def _secret_of(request: web.Request, row: KeypairRow | None) -> str | None:
    """The keypair's secret key, decrypted (manager/secretbox.py); None for an unknown key or one that does not
    decrypt (logged: the start-up check makes that rare, e.g. a row written by a manager with another key)."""
    if row is None:
        return None
    keypair = row[0]
    try:
        return request.app[CTX].keypair_box.open(keypair.access_key, keypair.secret_key_sealed)
    except SecretBoxError as exc:
        log.error("refusing a request: %s", exc)
        return None


def _caller(row: KeypairRow) -> Caller:
    keypair, user = row
    if not keypair.is_active or not user.is_active:
        raise AuthFailed("the keypair or its user is inactive")
    return Caller(user.id, keypair.access_key, keypair.role, user.domain_name)


async def authenticate_token(request: web.Request, token: str) -> Caller:
    """``X-BackendAI-Token``: a keypair JWT (HS256) signed with the keypair's secret key; claims ``access_key``
    and ``exp`` are required."""
    if len(token) > 4096:
        raise AuthFailed("token too long")
    try:
        unverified = jwt.decode(token, options={"verify_signature": False})
        access_key = str(unverified.get("access_key", ""))
    except jwt.PyJWTError:
        raise AuthFailed("malformed X-BackendAI-Token") from None
    row = await _load_keypair(request, access_key) if access_key else None
    secret = _secret_of(request, row)
    try:
        jwt.decode(token, secret or UNKNOWN_KEY_SECRET, algorithms=["HS256"],
                   options={"require": ["exp", "access_key"]})
    except jwt.ExpiredSignatureError:
        raise AuthFailed("X-BackendAI-Token expired") from None
    except jwt.PyJWTError:
        raise AuthFailed("credential/signature mismatch") from None
    if row is None or secret is None:
        raise AuthFailed("credential/signature mismatch")
    return _caller(row)


async def authenticate(request: web.Request) -> Caller:
    token = request.headers.get("X-BackendAI-Token")
    if token:  # checked before Authorization, as Backend.AI does
        return await authenticate_token(request, token)
    header = request.headers.get("Authorization", "")
    parsed = hmac_auth.parse_authorization(header)
    if parsed is None:
        raise AuthFailed("missing or malformed Authorization header (expected BackendAI signMethod=HMAC-SHA256)")
    alg, access_key, given_sig = parsed
    if alg not in hmac_auth.EMPTY_BODY_HASH:
        raise AuthFailed(f"unsupported signMethod HMAC-{alg.upper()}")
    date_str = request.headers.get("Date") or request.headers.get("X-BackendAI-Date") or ""
    if not date_str:
        raise AuthFailed("missing Date header")
    try:
        date = hmac_auth.parse_date(date_str)
    except (ValueError, TypeError):
        raise AuthFailed("malformed Date header") from None
    ctx = request.app[CTX]
    window = ctx.config.auth.clock_skew
    now = datetime.now(UTC)
    if abs((now - date).total_seconds()) > window:
        raise AuthFailed(f"Date/time sync error: the request date is more than {window:g} seconds off the "
                         f"server's clock (auth.clock_skew)")
    version = request.headers.get("X-BackendAI-Version", "")
    if version and version not in hmac_auth.SUPPORTED_VERSIONS:
        raise AuthFailed(f"unsupported API version {version!r}")
    content_sha = request.headers.get(hmac_auth.CONTENT_SHA256_HEADER)
    body_sha256 = None
    if content_sha is not None:
        body_sha256 = hmac_auth.parse_content_sha256(content_sha)
        if body_sha256 is None:
            raise AuthFailed(f"{hmac_auth.CONTENT_SHA256_HEADER}: must be 64 hex digits (SHA-256 of the body)")
    row = await _load_keypair(request, access_key)
    # Compute a signature even for unknown keys so timing does not reveal which access keys exist.
    secret = _secret_of(request, row)
    # Without a Content-Type header, clients sign aiohttp's default, application/octet-stream (Backend.AI's
    # verifier reads request.content_type, which defaults to it); the official client does so for SSE GETs.
    content_type = request.headers.get("Content-Type") or "application/octet-stream"
    ok = hmac_auth.verify(secret or UNKNOWN_KEY_SECRET, request.method, request.raw_path, date_str,
                          request.headers.get("Host", ""), content_type, version, alg, given_sig, body_sha256)
    if row is None or secret is None or not ok:
        raise AuthFailed("credential/signature mismatch")
    caller = _caller(row)
    if body_sha256 is not None:
        await read_hashed_body(request, hmac_auth.CONTENT_SHA256_HEADER, body_sha256,
                               ctx.config.limits.max_json_body)
    if not ctx.replay.claim((access_key, given_sig), date.timestamp() + window, now.timestamp()):
        raise AuthFailed("replayed request: this signature was already used; sign every request afresh")
    return caller


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS or request.path.startswith(INTERNAL_PREFIX):
        return await handler(request)
    request[CALLER] = await authenticate(request)
    return await handler(request)


CALLER: web.RequestKey[Caller] = web.RequestKey("moorage_caller", Caller)


def caller_of(request: web.Request) -> Caller:
    return request[CALLER]
