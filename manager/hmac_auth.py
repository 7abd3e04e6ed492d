"""Backend.AI keypair request signing (docs/architecture.md, Service API), shared by the verifier and our CLI.

string_to_sign = METHOD \\n PATH(with query) \\n DATE \\n host:HOST \\n content-type:CT \\n x-backendai-version:V \\n
BODY_HASH
key = HMAC(HMAC(secret, date.strftime("%Y%m%d")), host); signature = hex(HMAC(key, string_to_sign)).

BODY_HASH is sha256(b"") as Backend.AI clients send it (they do not sign the body for API versions >=
v4.20181215). Our extension: a client that sends ``X-Moorage-Content-SHA256: <hex sha256 of the body>`` signs that
value in its place, and the manager checks it against the body received. Stripping the header then breaks the
signature, and a different body no longer matches it, so a captured request cannot carry another body.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import UTC, datetime

API_VERSION = "v9.20250722"
SUPPORTED_VERSIONS = (
    "v4.20181215", "v4.20190115", "v4.20190315", "v4.20190615", "v5.20191215", "v6.20200815",
    "v6.20210815", "v6.20220315", "v6.20220615", "v7.20230615", "v8.20240315", "v8.20240915",
    "v9.20250722",
)
_AUTH_RE = re.compile(
    r"^(?:BackendAI|Sorna)\s+signMethod=HMAC-(?P<alg>[A-Za-z0-9]+),\s*credential=(?P<ak>[^:\s]+):(?P<sig>[0-9a-fA-F]+)$"
)
CONTENT_SHA256_HEADER = "X-Moorage-Content-SHA256"
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
EMPTY_BODY_HASH = {alg: hashlib.new(alg, b"").hexdigest() for alg in ("sha256", "sha1", "sha512", "md5")}


def parse_authorization(header: str) -> tuple[str, str, str] | None:
    """Return ``(hash_alg, access_key, signature)`` or None."""
    match = _AUTH_RE.match(header.strip())
    if not match:
        return None
    return match.group("alg").lower(), match.group("ak"), match.group("sig").lower()


def bare_content_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def parse_content_sha256(value: str) -> str | None:
    """The header's hash in lowercase hex, or None when it is not 64 hex digits."""
    value = value.strip().lower()
    return value if _SHA256_HEX.match(value) else None


def string_to_sign(method: str, path_qs: str, date_str: str, host: str, content_type: str, version: str,
                   alg: str = "sha256", body_sha256: str | None = None) -> str:
    body_hash = body_sha256 or EMPTY_BODY_HASH.get(alg) or hashlib.new(alg, b"").hexdigest()
    return "\n".join([
        method.upper(), path_qs, date_str, f"host:{host}", f"content-type:{bare_content_type(content_type)}",
        f"x-backendai-version:{version}", body_hash,
    ])


def signature(secret_key: str, date: datetime, host: str, text: str, alg: str = "sha256") -> str:
    k1 = hmac.new(secret_key.encode(), date.strftime("%Y%m%d").encode(), alg).digest()
    k2 = hmac.new(k1, host.encode(), alg).digest()
    return hmac.new(k2, text.encode(), alg).hexdigest()


def sign_request(access_key: str, secret_key: str, method: str, path_qs: str, host: str,
                 content_type: str, version: str = API_VERSION, now: datetime | None = None,
                 body: bytes | None = None) -> dict[str, str]:
    """Headers for a signed request: what the official client sends, plus the body hash when ``body`` is given."""
    date = now or datetime.now(UTC)
    date_str = date.isoformat()
    body_sha256 = hashlib.sha256(body).hexdigest() if body is not None else None
    text = string_to_sign(method, path_qs, date_str, host, content_type, version, body_sha256=body_sha256)
    sig = signature(secret_key, date, host, text)
    extra = {CONTENT_SHA256_HEADER: body_sha256} if body_sha256 else {}
    return {**extra,
        "Date": date_str,
        "X-BackendAI-Version": version,
        "X-BackendAI-Domain": "default",
        "Content-Type": content_type,
        "Authorization": f"BackendAI signMethod=HMAC-SHA256, credential={access_key}:{sig}",
    }


def parse_date(value: str) -> datetime:
    """Parse the client's ISO-8601 Date (RFC 1123 also accepted); naive dates are taken as UTC."""
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        from email.utils import parsedate_to_datetime

        parsed = parsedate_to_datetime(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def verify(secret_key: str, method: str, path_qs: str, date_str: str, host: str, content_type: str, version: str,
           alg: str, given_sig: str, body_sha256: str | None = None) -> bool:
    """Constant-time check of ``given_sig``; ``body_sha256`` is the X-Moorage-Content-SHA256 value if sent."""
    date = parse_date(date_str)
    text = string_to_sign(method, path_qs, date_str, host, content_type, version, alg, body_sha256)
    expected = signature(secret_key, date, host, text, alg)
    return hmac.compare_digest(expected, given_sig.lower())
