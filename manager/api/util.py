"""Request helpers: bounded JSON bodies validated by pydantic, uuid path params, the signed body hash."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from common.errors import InvalidAPIParameters, PayloadTooLarge, invalid_params_from_validation
from common.errors import parse_uuid as parse_uuid  # re-exported: the handlers' path parameters
from common.jsondepth import json_depth_exceeds
from manager.context import CTX

M = TypeVar("M", bound=BaseModel)
# The deepest body a client sends nests 4 levels (config.extra_mounts.<id>.<option>); 32 leaves room for
# GraphQL variables and resource_opts while keeping every later walk over the value (validation, JSON columns,
# json.dumps) far from Python's recursion limit.
MAX_JSON_DEPTH = 32
# the body auth already read to check its X-Moorage-Content-SHA256 (read_json uses it instead of the stream)
VERIFIED_BODY: web.RequestKey[bytes] = web.RequestKey("moorage_verified_body", bytes)


async def read_limited(request: web.Request, limit: int) -> bytes:
    """The whole body, or 413 when it is over ``limit`` bytes (declared or sent)."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body over {limit} bytes")
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        raise PayloadTooLarge(f"request body over {limit} bytes")
    return raw


async def read_hashed_body(request: web.Request, header: str, expected: str, limit: int) -> None:
    """Read the body (a buffered one: JSON, at most ``limit`` bytes) and check it against ``expected``."""
    if request.content_type.startswith("multipart/"):
        raise InvalidAPIParameters(f"{header}: not accepted on multipart uploads (they are streamed); omit it")
    raw = await read_limited(request, limit)
    if not hmac.compare_digest(hashlib.sha256(raw).hexdigest(), expected):
        raise InvalidAPIParameters(f"{header}: does not match the SHA-256 of the request body")
    request[VERIFIED_BODY] = raw


async def read_json(request: web.Request, limit: int) -> Any:
    raw = request.get(VERIFIED_BODY)
    if raw is None:
        raw = await read_limited(request, limit)
    elif len(raw) > limit:
        raise PayloadTooLarge(f"request body over {limit} bytes")
    if not raw.strip():
        return {}
    return loads_bounded(raw)


def _refuse_constant(name: str) -> Any:
    raise InvalidAPIParameters(f"body: {name} is not valid JSON (numbers must be finite)")


def loads_bounded(raw: bytes | str) -> Any:
    """Strict JSON: 400 on syntax errors, NaN/Infinity, or nesting deeper than MAX_JSON_DEPTH."""
    too_deep = InvalidAPIParameters(f"body: JSON nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        value = json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:
        raise too_deep from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, integers over 4300 digits
        raise InvalidAPIParameters(f"body: invalid JSON ({str(exc)[:200]})") from None
    if json_depth_exceeds(value, MAX_JSON_DEPTH):
        raise too_deep
    return value


async def parse_body(request: web.Request, model: type[M]) -> M:
    data = await read_json(request, request.app[CTX].config.limits.max_json_body)
    if not isinstance(data, dict):
        raise InvalidAPIParameters("body: must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_params_from_validation(exc) from None


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, default=str))


def service_ref(request: web.Request) -> tuple[uuid.UUID, str]:
    """The ``{service_id}`` path parameter as a UUID (400 if it is not one) and as written (for the 404)."""
    raw = request.match_info["service_id"]
    return parse_uuid(raw, "service_id"), raw
