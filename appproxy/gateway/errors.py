"""Errors of the gateway as OpenAI's API writes them: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import json

from aiohttp import web


class OpenAIError(Exception):
    """An answer the gateway gives itself. ``param`` names the offending request field, if any."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",  # noqa: A002
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> bytes:
        return json.dumps({"error": {"message": self.message, "type": self.type, "param": self.param,
                                     "code": self.code}}).encode()

    def to_response(self, extra_headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(status=self.status, body=self.body(), content_type="application/json",
                            headers={**(extra_headers or {}), **self.headers})


def bad_request(message: str, param: str | None, code: str = "invalid_value") -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def model_not_found(model: str) -> OpenAIError:
    """The same answer whether the model does not exist or the key may not use it (as OpenAI answers): a key
    learns nothing about models outside its reach."""
    shown = model if len(model) <= 64 else model[:64] + "…"
    return OpenAIError(404, f"The model `{shown}` does not exist or you do not have access to it.",
                       param="model", code="model_not_found")
