"""Request helpers: bounded JSON bodies validated by pydantic, uuid path params."""

from __future__ import annotations

import json
import uuid
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from common.errors import InvalidAPIParameters, PayloadTooLarge, invalid_params_from_validation
from manager.context import CTX

M = TypeVar("M", bound=BaseModel)


async def read_json(request: web.Request, limit: int) -> Any:
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body over {limit} bytes")
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        raise PayloadTooLarge(f"request body over {limit} bytes")
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidAPIParameters(f"body: invalid JSON ({exc})") from None


async def parse_body(request: web.Request, model: type[M]) -> M:
    data = await read_json(request, request.app[CTX].config.limits.max_json_body)
    if not isinstance(data, dict):
        raise InvalidAPIParameters("body: must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_params_from_validation(exc) from None


def parse_uuid(value: str, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidAPIParameters(f"{field}: not a valid UUID") from None


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, default=str))
