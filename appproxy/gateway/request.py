"""Validating a gateway request body before anything reaches a replica (pure; docs/gateway.md).

Only what the gateway relies on is checked (the replica validates the rest): a JSON object, ``model`` a
non-empty string, ``stream`` a boolean, ``max_tokens``/``max_completion_tokens`` an integer in
``1..max_tokens_limit``, ``n`` in ``1..max_n``, ``stream_options`` an object, and the prompt fields' types.
Each failure is a 400 whose ``param`` names the field. The prompt's token count is estimated from its length
(4 bytes a token, rounded up), which only sizes the rate-limit reservation: it is corrected to the replica's
reported usage when the answer ends.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from typing import Any

from appproxy.gateway.errors import bad_request
from common.jsondepth import json_depth_exceeds

BYTES_PER_TOKEN = 4  # the usual rule of thumb for English text with BPE tokenizers
MAX_JSON_DEPTH = 64


class Kind(enum.StrEnum):
    CHAT = "chat"
    COMPLETION = "completion"
    EMBEDDING = "embedding"


PATHS = {"/v1/chat/completions": Kind.CHAT, "/v1/completions": Kind.COMPLETION, "/v1/embeddings": Kind.EMBEDDING}
PROMPT_FIELD = {Kind.CHAT: "messages", Kind.COMPLETION: "prompt", Kind.EMBEDDING: "input"}


@dataclasses.dataclass(frozen=True, slots=True)
class GatewayRequest:
    kind: Kind
    model: str
    body: dict[str, Any]
    stream: bool
    max_tokens: int | None  # as asked (None: the replica's default)
    n: int
    prompt_estimate: int  # tokens
    wants_usage: bool  # a streaming client asked for the usage chunk itself


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _int_field(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"'{name}' must be an integer.", name, "invalid_type")
    if not low <= value <= high:
        raise bad_request(f"'{name}' must be between {low} and {high} (got {value}).", name)
    return value


def parse_request(kind: Kind, raw: bytes, *, max_tokens_limit: int, max_n: int) -> GatewayRequest:
    """The validated request, or :class:`OpenAIError` 400 naming the field."""
    try:
        body = json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:
        raise bad_request(f"The request body nests deeper than {MAX_JSON_DEPTH} levels.", None,
                          "invalid_json") from None
    except ValueError as exc:
        raise bad_request(f"The request body is not valid JSON ({str(exc)[:120]}).", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", None, "invalid_json")
    if json_depth_exceeds(body, MAX_JSON_DEPTH):
        raise bad_request(f"The request body nests deeper than {MAX_JSON_DEPTH} levels.", None, "invalid_json")
    model = body.get("model")
    if model is None:
        raise bad_request("You must provide a model parameter.", "model", "missing_required_parameter")
    if not isinstance(model, str) or not model.strip():
        raise bad_request("'model' must be a non-empty string.", "model", "invalid_type")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean.", "stream", "invalid_type")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request("'stream_options' must be an object.", "stream_options", "invalid_type")
    wants_usage = bool(stream and options and options.get("include_usage") is True)
    max_tokens = _int_field(body, "max_tokens", 1, max_tokens_limit)
    max_completion = _int_field(body, "max_completion_tokens", 1, max_tokens_limit)
    if max_completion is not None:
        max_tokens = max_completion if max_tokens is None else min(max_tokens, max_completion)
    n = _int_field(body, "n", 1, max_n) or 1
    field = PROMPT_FIELD[kind]
    prompt = body.get(field)
    if prompt is None:
        raise bad_request(f"'{field}' is required.", field, "missing_required_parameter")
    if kind is Kind.CHAT and (not isinstance(prompt, list) or not prompt
                              or not all(isinstance(m, dict) for m in prompt)):
        raise bad_request("'messages' must be a non-empty array of message objects.", "messages", "invalid_type")
    if kind is not Kind.CHAT and not isinstance(prompt, (str, list)):
        raise bad_request(f"'{field}' must be a string or an array.", field, "invalid_type")
    if kind is Kind.EMBEDDING and stream:
        raise bad_request("Embeddings cannot be streamed.", "stream")
    estimate = -(-len(json.dumps(prompt, ensure_ascii=False).encode()) // BYTES_PER_TOKEN)
    return GatewayRequest(kind=kind, model=model, body=body, stream=stream, max_tokens=max_tokens, n=n,
                          prompt_estimate=estimate, wants_usage=wants_usage)


def upstream_body(request: GatewayRequest, raw: bytes, model: str | None = None) -> bytes:
    """The body sent to the replica: as received, except that a streaming chat or completion request that did
    not ask for usage asks for it (``stream_options.include_usage``) so that the gateway can meter it (the
    gateway strips that extra chunk from what the client receives: :mod:`appproxy.gateway.usage`), and that
    ``model``, when given, replaces the client's (the engine's own name for the service)."""
    asks_usage = request.stream and not request.wants_usage and request.kind is not Kind.EMBEDDING
    if not asks_usage and model is None:
        return raw
    body = dict(request.body)
    if asks_usage:
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    if model is not None:
        body["model"] = model
    return json.dumps(body, ensure_ascii=False).encode()


def reservation(request: GatewayRequest, default_max_tokens: int) -> int:
    """Tokens reserved against the key's TPM at admission: the prompt estimate plus what the answer may use."""
    if request.kind is Kind.EMBEDDING:
        return request.prompt_estimate
    return request.prompt_estimate + request.n * (request.max_tokens or default_max_tokens)
