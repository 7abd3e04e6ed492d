"""What the ``moorage service`` command modules (:mod:`manager.cli.service`, :mod:`manager.cli.service_update`,
:mod:`manager.cli.autoscale`) share: argument types and the ``NAME_OR_ID`` lookup.

``NAME_OR_ID``: a UUID is used as is; anything else is looked up with ``GET /services?name=NAME`` and must
match exactly one service.
"""

from __future__ import annotations

import argparse
import uuid

from manager.cli.client import Client, quote_segment
from manager.cli.connection import CLIError


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def resolve_service_id(client: Client, ref: str) -> str:
    """A UUID as is; otherwise the id of the single service with exactly that name."""
    try:
        return str(uuid.UUID(ref))
    except ValueError:
        pass
    items = client.get("/services", params={"name": ref}) or []
    matches = [item for item in items if isinstance(item, dict) and item.get("name") == ref]
    if not matches:
        raise CLIError(f"no service named {ref}")
    if len(matches) > 1:
        raise CLIError(f"{len(matches)} services are named {ref}; use the service id")
    found = matches[0].get("id") or matches[0].get("endpoint_id")
    if not found:
        raise CLIError(f"the manager listed service {ref} without an id")
    return str(found)


def _service_path(client: Client, ref: str, suffix: str = "") -> str:
    return f"/services/{quote_segment(resolve_service_id(client, ref))}{suffix}"
