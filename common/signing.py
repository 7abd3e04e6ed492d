"""Authentication of the internal channels (manager ↔ agent, agent → manager).

Each request carries ``X-Moorage-Timestamp`` (unix seconds) and ``X-Moorage-Signature`` =
hex HMAC-SHA256(cluster secret, ``METHOD\\nPATH_QS\\nTIMESTAMP\\nsha256(body)``). The verifier rejects
requests outside ±``MAX_SKEW`` seconds and compares in constant time. The middleware also refuses a signature it
has already accepted (a per-process :class:`~common.replay.ReplayCache` over the same window): the signature covers
the body, so a replay could only repeat a call verbatim, and even that is refused. Timestamps carry microseconds,
so two identical calls in the same second still differ. (All internal operations are idempotent besides: callers
choose ids.)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler

from common.errors import AuthFailed, PayloadTooLarge, ProblemError
from common.replay import ReplayCache

TIMESTAMP_HEADER = "X-Moorage-Timestamp"
SIGNATURE_HEADER = "X-Moorage-Signature"
MAX_SKEW = 60.0  # seconds; internal hosts run NTP, and the window bounds replays of idempotent calls
MAX_INTERNAL_BODY = 8 * 1024 * 1024  # heartbeats with hundreds of kernels stay far below this
# Signatures remembered for MAX_SKEW each: 100,000 covers 1,600 internal calls a second (a thousand agents
# beating every 3 s is about 330), at about 15 MB.
MAX_INTERNAL_REPLAY_ENTRIES = 100_000


SIGNED_BODY: web.RequestKey[bytes] = web.RequestKey("moorage_signed_body", bytes)


def compute_signature(secret: str, method: str, path_qs: str, timestamp: str, body: bytes) -> str:
    message = "\n".join([method.upper(), path_qs, timestamp, hashlib.sha256(body).hexdigest()])
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def sign_headers(secret: str, method: str, path_qs: str, body: bytes, now: float | None = None) -> dict[str, str]:
    ts = f"{now if now is not None else time.time():.6f}"  # verifiers parse it as a float
    return {TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: compute_signature(secret, method, path_qs, ts, body)}


def verify_signature(
    secret: str, method: str, path_qs: str, body: bytes, headers: Any, now: float | None = None,
    replay: ReplayCache | None = None,
) -> None:
    """Raise AuthFailed unless the request is signed with ``secret``, fresh, and (given ``replay``) new."""
    ts = headers.get(TIMESTAMP_HEADER, "")
    sig = headers.get(SIGNATURE_HEADER, "")
    if not ts or not sig:
        raise AuthFailed("missing internal request signature")
    try:
        ts_value = float(ts)
    except ValueError:
        raise AuthFailed("malformed internal request timestamp") from None
    current = now if now is not None else time.time()
    if abs(current - ts_value) > MAX_SKEW:
        raise AuthFailed("internal request timestamp outside the allowed window")
    expected = compute_signature(secret, method, path_qs, ts, body)
    if not hmac.compare_digest(expected, sig):
        raise AuthFailed("internal request signature mismatch")
    if replay is not None and not replay.claim((sig,), ts_value + MAX_SKEW, current):
        raise AuthFailed("internal request replayed: this signature was already used")


def signed_request_middleware(secret: str, protected_prefix: str = "/") -> Any:
    """aiohttp middleware that rejects unsigned or replayed requests under ``protected_prefix``."""
    replay = ReplayCache(MAX_INTERNAL_REPLAY_ENTRIES)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(protected_prefix):
            if request.content_length is not None and request.content_length > MAX_INTERNAL_BODY:
                raise PayloadTooLarge(f"internal request body over {MAX_INTERNAL_BODY} bytes")
            body = await request.content.read(MAX_INTERNAL_BODY + 1)
            if len(body) > MAX_INTERNAL_BODY:
                raise PayloadTooLarge(f"internal request body over {MAX_INTERNAL_BODY} bytes")
            verify_signature(secret, request.method, request.path_qs, body, request.headers, replay=replay)
            request[SIGNED_BODY] = body
        return await handler(request)

    return middleware


async def read_signed_json(request: web.Request) -> Any:
    body: bytes = request.get(SIGNED_BODY, b"")
    if not body:
        return {}
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        from common.errors import InvalidAPIParameters

        raise InvalidAPIParameters(f"body: invalid JSON: {exc}") from None


class RPCError(Exception):
    def __init__(self, status: int, body: Any):
        super().__init__(f"RPC failed with HTTP {status}: {body}")
        self.status = status
        self.body = body


class SignedClient:
    """JSON-over-HTTP client that signs each request with the cluster secret."""

    def __init__(self, session: aiohttp.ClientSession, secret: str, timeout: float = 10.0):
        self._session = session
        self._secret = secret
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def call(self, method: str, base_url: str, path: str, payload: Any = None,
                   timeout: float | None = None) -> Any:
        body = b"" if payload is None else json.dumps(payload, default=str).encode()
        headers = sign_headers(self._secret, method, path, body)
        if payload is not None:
            headers["Content-Type"] = "application/json"
        client_timeout = aiohttp.ClientTimeout(total=timeout) if timeout else self._timeout
        async with self._session.request(method, base_url.rstrip("/") + path, data=body, headers=headers,
                                         timeout=client_timeout) as resp:
            raw = await resp.read()
            try:
                data = json.loads(raw) if raw else None
            except json.JSONDecodeError:
                data = raw.decode(errors="replace")[:500]
            if resp.status >= 400:
                raise RPCError(resp.status, data)
            return data


__all__ = [
    "ProblemError",
    "RPCError",
    "SignedClient",
    "compute_signature",
    "read_signed_json",
    "sign_headers",
    "signed_request_middleware",
    "verify_signature",
]
