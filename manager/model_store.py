"""The Model Store: model folders that hold both ``model-definition.yaml`` and ``service-definition.toml``, read
into what a card shows (docs/console-api.md, "Model Store"). Pure reading; starting a service is the API's."""

from __future__ import annotations

import re
import stat
from pathlib import Path
from typing import Any

from common.definitions import (
    MAX_DEFINITION_BYTES,
    SERVICE_DEFINITION_FILE,
    DefinitionError,
    ModelDefinition,
    ServiceDefinition,
    parse_model_definition,
    parse_service_definition,
)
from manager.db.models import ModelFolder
from manager.definition_check import DefinitionKind, check_definition
from manager.variants import LABELS

MODEL_DEFINITION_FILE = "model-definition.yaml"
STORE_FILES = (MODEL_DEFINITION_FILE, SERVICE_DEFINITION_FILE)


def _regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)  # a symlink does not count: it could point anywhere
    except OSError:
        return False


def in_store(root: Path) -> bool:
    return all(_regular_file(root / name) for name in STORE_FILES)


def pick_variant(service: ServiceDefinition | None) -> str:
    """The runtime variant a card runs: the first table of the service definition named after a known variant
    (other than custom); ``custom`` (the folder's own model definition) otherwise."""
    for name in (service.model_extra or {}) if service is not None else ():
        if name in LABELS and name != "custom":
            return name
    return "custom"


def service_name_for(folder_name: str, taken: set[str], min_len: int, max_len: int) -> str | None:
    """A service name (``min_len``..``max_len`` of letters, digits, ``_`` and ``-``, not starting or ending with
    ``-``) made from a folder's name, not in ``taken``; None when the first 99 candidates are all taken."""
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", folder_name).strip("-")[:max_len - 3].strip("-") or "model"
    if len(base) < min_len:
        base = f"{base}-svc"
    for n in range(1, 100):
        candidate = base if n == 1 else f"{base}-{n}"
        if candidate not in taken:
            return candidate
    return None


def _read(path: Path) -> str | None:
    with open(path, "rb") as fh:
        raw = fh.read(MAX_DEFINITION_BYTES + 1)
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def card(root: Path, folder: ModelFolder) -> dict[str, Any]:
    """What a Model Store card shows; a definition with errors still gives a card, with its errors."""
    texts = {name: _read(root / name) for name in STORE_FILES}
    errors: list[dict[str, Any]] = []
    model: ModelDefinition | None = None
    service: ServiceDefinition | None = None
    for name, kind in ((MODEL_DEFINITION_FILE, DefinitionKind.MODEL), (SERVICE_DEFINITION_FILE,
                                                                       DefinitionKind.SERVICE)):
        text = texts[name]
        if text is None:
            errors.append({"field": f"{name}:(encoding)", "reason": "not UTF-8 text", "line": None})
            continue
        problems = check_definition(kind, text)
        errors += [p.to_json() | {"field": f"{name}:{p.field}"} for p in problems]
        if problems:
            continue
        try:
            if kind == DefinitionKind.MODEL:
                model = parse_model_definition(text)
            else:
                service = parse_service_definition(text)
        except DefinitionError:  # pragma: no cover - check_definition found none
            continue
    meta = next((m.metadata for m in model.models if m.metadata is not None), None) if model else None
    serving = next((m for m in model.models if m.service is not None), None) if model else None
    variant = pick_variant(service)
    resolved = service.resolve(variant) if service is not None else None
    return {
        "folder_id": str(folder.id), "name": folder.name, "owner": str(folder.owner_id),
        "title": _text(meta.title) if meta else None, "description": _text(meta.description) if meta else None,
        "author": _text(meta.author) if meta else None, "version": _text(meta.version) if meta else None,
        "task": _text(meta.task) if meta else None, "category": _text(meta.category) if meta else None,
        "labels": [str(x) for x in meta.label] if meta else [], "license": _text(meta.license) if meta else None,
        "model_name": serving.name if serving else None, "runtime_variant": variant,
        "image": resolved.image if resolved else None,
        "resources": {k: str(v) for k, v in resolved.resource_slots.items()} if resolved else {},
        "errors": errors,
    }
