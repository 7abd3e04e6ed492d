"""Chat conversations' rules: bounds on what is stored, and the exports (docs/console-api.md, "Conversations").
Pure functions over plain data; the routes are manager/api/conversations.py."""

from __future__ import annotations

import json
import re
from typing import Any

from common.errors import InvalidAPIParameters, PayloadTooLarge
from manager.config import ConversationsSection


def check_messages(messages: list[dict[str, Any]], limits: ConversationsSection, field: str = "messages") -> None:
    """400 naming the field when there are too many messages or one is too long."""
    if len(messages) > limits.max_messages:
        raise InvalidAPIParameters(f"{field}: at most {limits.max_messages} messages in a conversation "
                                   "(conversations.max_messages)")
    for i, message in enumerate(messages):
        if len(message["content"]) > limits.max_content_chars:
            raise InvalidAPIParameters(f"{field}.{i}.content: longer than {limits.max_content_chars} characters "
                                       "(conversations.max_content_chars)")


def check_stored_size(models: list[Any], parameters: dict[str, Any], messages: list[Any],
                      limits: ConversationsSection) -> None:
    """413 when the conversation as stored would be over ``max_conversation_bytes``."""
    size = len(json.dumps([models, parameters, messages], separators=(",", ":")).encode())
    if size > limits.max_conversation_bytes:
        raise PayloadTooLarge(f"messages: the conversation would be {size} bytes, over "
                              f"{limits.max_conversation_bytes} (conversations.max_conversation_bytes); start a new "
                              "one")


def export_filename(title: str, extension: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", title).strip("-.")[:80] or "conversation"
    return f"{stem}.{extension}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _model_label(model: dict[str, Any]) -> str:
    parts = []
    if model.get("service_id"):
        parts.append(f"service {model['service_id']}")
    if model.get("base_url"):
        parts.append(f"custom API {model['base_url']}")
    if model.get("model"):
        parts.append(f"model {model['model']}")
    return ", ".join(parts) or "(unspecified)"


def _stats_label(message: dict[str, Any]) -> str:
    stats = message.get("stats") or {}
    bits = []
    if message.get("model_index") is not None:
        bits.append(f"model {message['model_index'] + 1}")
    if stats.get("ttft_ms") is not None:
        bits.append(f"TTFT {stats['ttft_ms']:g} ms")
    if stats.get("tokens_per_second") is not None:
        bits.append(f"{stats['tokens_per_second']:.1f} tokens/s")
    return f" ({' · '.join(bits)})" if bits else ""


def to_markdown(conversation: dict[str, Any]) -> str:
    """The conversation as a Markdown document: title, settings, then each message under its role."""
    lines = [f"# {_one_line(conversation['title'])}", "",
             f"- Created: {conversation['created_at']}", f"- Updated: {conversation['updated_at']}"]
    for i, model in enumerate(conversation["models"], start=1):
        lines.append(f"- Model {i}: {_model_label(model)}")
    params = conversation["parameters"]
    for key in ("temperature", "top_p", "max_tokens"):
        if params.get(key) is not None:
            lines.append(f"- {key}: {params[key]}")
    if params.get("system_prompt"):
        lines += ["", "## System prompt", "", params["system_prompt"]]
    for message in conversation["messages"]:
        lines += ["", f"## {message['role'].capitalize()}{_stats_label(message)}", "", message["content"]]
    return "\n".join(lines) + "\n"
