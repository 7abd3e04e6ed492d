"""Typed errors that render as RFC 7807 problem documents.

Every error a component returns to a client is a :class:`ProblemError`. The ``type`` URIs follow
Backend.AI's slugs (``https://api.backend.ai/probs/<slug>``) so its client recognises them.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://api.backend.ai/probs/"


class ProblemError(Exception):
    """An error with an HTTP status and an RFC 7807 body."""

    status: int = 500
    slug: str = "internal-server-error"
    title: str = "Internal server error"

    def __init__(self, detail: str | None = None, *, data: Any = None, extra: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.data = data
        self.extra = extra or {}
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": PROBLEM_TYPE_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "msg": self.detail,
            "error_code": f"{self.slug}",
        }
        if self.data is not None:
            body["data"] = self.data
        body.update(self.extra)
        return body

    def to_response(self) -> web.Response:
        return web.Response(
            status=self.status,
            body=json.dumps(self.to_dict()).encode(),
            content_type=PROBLEM_CONTENT_TYPE,
            headers=self.headers or None,
        )


class InvalidAPIParameters(ProblemError):
    status, slug, title = 400, "invalid-api-params", "Missing or invalid API parameters."


class GenericBadRequest(ProblemError):
    status, slug, title = 400, "generic-bad-request", "Bad request."


class ModelDefinitionInvalid(ProblemError):
    status, slug, title = 400, "model-definition-validation-failed", "The model definition is invalid."


class AuthFailed(ProblemError):
    status, slug, title = 401, "auth-failed", "Credential/signature mismatch."


class Forbidden(ProblemError):
    status, slug, title = 403, "generic-forbidden", "Forbidden operation."


class ObjectNotFound(ProblemError):
    status, slug, title = 404, "object-not-found", "No such object."


class Conflict(ProblemError):
    status, slug, title = 409, "object-already-exists", "The object already exists."


class PayloadTooLarge(ProblemError):
    status, slug, title = 413, "payload-too-large", "The request body is too large."


class ServiceUnavailable(ProblemError):
    status, slug, title = 503, "service-unavailable", "Service unavailable."


def parse_uuid(value: str, field: str) -> uuid.UUID:
    """``value`` as a UUID, or 400 naming ``field``."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidAPIParameters(f"{field}: not a valid UUID") from None


def pydantic_detail(exc: Any, prefix: str = "") -> tuple[str, list[dict[str, Any]]]:
    """Turn a pydantic ``ValidationError`` into a one-line message naming every bad field, plus the list."""
    items: list[dict[str, Any]] = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(part) for part in err.get("loc", ()) if part != "__root__")
        if prefix:
            loc = f"{prefix}.{loc}" if loc else prefix
        items.append({"field": loc or "(root)", "reason": err.get("msg", "invalid")})
    msg = "; ".join(f"{i['field']}: {i['reason']}" for i in items)
    return msg, items


def invalid_params_from_validation(exc: Any, prefix: str = "") -> InvalidAPIParameters:
    msg, items = pydantic_detail(exc, prefix)
    return InvalidAPIParameters(msg, data={"errors": items})


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render :class:`ProblemError` and stray exceptions as RFC 7807; never leak a traceback."""
    try:
        return await handler(request)
    except ProblemError as exc:
        return exc.to_response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # keep what the status needs to be useful (Allow on a 405, Retry-After on a 429/503)
        kept = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after", "www-authenticate")}
        problem = ProblemError(exc.reason, headers=kept)
        problem.status = exc.status
        problem.slug = "http-error"
        problem.title = exc.reason
        return problem.to_response()
    except Exception:  # pragma: no cover - last line of defence
        import logging

        logging.getLogger(__name__).exception("unhandled error in %s %s", request.method, request.path)
        return ProblemError("Internal server error; see the server log.").to_response()
