"""Endpoint creation logic: resolve the model folder, the definition, the resources, and a stable URL."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from common.definitions import (
    DEFAULT_DEFINITION_FILES,
    SERVICE_DEFINITION_FILE,
    DefinitionError,
    ModelDefinition,
    ResolvedServiceDefaults,
    parse_model_definition,
    parse_service_definition,
)
from common.errors import (
    Conflict,
    InvalidAPIParameters,
    ModelDefinitionInvalid,
    ObjectNotFound,
)
from common.slots import ResourceSlots, SlotError
from manager.addresses import name_taken, subdomain_base  # noqa: F401  (subdomain_base: re-exported)
from manager.config import ManagerConfig
from manager.db.models import ModelFolder
from manager.folders import list_files, safe_relative_path
from manager.ownership import Caller, owner_visibility
from manager.variants import LABELS, VariantError, synthesize_definition

RUNTIME_VARIANT_LABELS = LABELS  # GET /services/_/runtimes (Backend.AI's variants plus our llamacpp)
KNOWN_VARIANTS = tuple(RUNTIME_VARIANT_LABELS)


async def find_folder(db: AsyncSession, caller: Caller, name_or_id: str) -> ModelFolder:
    """A folder of the caller's by name; by id, any folder whose owner the caller may act for (superadmins: any,
    domain admins: their domain's users', manager.ownership.owner_visibility). Unknown or foreign → 404."""
    query = sa.select(ModelFolder)
    try:
        folder_id = uuid.UUID(name_or_id)
        query = query.where(ModelFolder.id == folder_id, owner_visibility(caller, ModelFolder.owner_id))
    except ValueError:
        query = query.where(ModelFolder.name == name_or_id, ModelFolder.owner_id == caller.user_id)
    folder = (await db.execute(query)).scalar_one_or_none()
    if folder is None:
        raise ObjectNotFound(f"model folder {name_or_id!r} not found")
    return folder


@dataclasses.dataclass
class ResolvedService:
    definition: dict[str, Any]
    definition_path: str | None  # None: synthesised for the runtime variant
    defaults: ResolvedServiceDefaults
    slots: ResourceSlots


def _find_definition(root: Path, definition_path: str | None) -> Path | None:
    candidates = [definition_path] if definition_path else list(DEFAULT_DEFINITION_FILES)
    for candidate in candidates:
        rel = safe_relative_path(candidate)
        path = root.joinpath(*rel.parts)
        if path.is_file() and root.resolve() in path.resolve().parents:
            return path
    return None


def resolve_service(config: ManagerConfig, folder: ModelFolder, variant: str, definition_path: str | None,
                    image: str | None, architecture: str | None, resources: dict[str, Any] | None,
                    resource_opts: dict[str, Any] | None, environ: dict[str, str] | None,
                    mount: str = "/models", service_name: str = "model") -> ResolvedService:
    """Layering (docs/architecture.md, Model folders and definitions): variant defaults < folder
    ``model-definition.yaml`` (wins when present) and ``service-definition.toml`` root < its variant section < the
    API request."""
    if variant not in KNOWN_VARIANTS:
        raise InvalidAPIParameters(f"runtime_variant: unknown variant {variant!r} (known: {', '.join(KNOWN_VARIANTS)})")
    root = Path(config.manager.storage_root) / folder.host_relpath
    if not root.is_dir():
        raise ObjectNotFound(f"model folder {folder.name!r} has no storage directory")
    defaults = ResolvedServiceDefaults()
    service_def = root / SERVICE_DEFINITION_FILE
    if service_def.is_file():
        try:
            defaults = parse_service_definition(service_def.read_bytes()).resolve(variant)
        except DefinitionError as exc:
            raise ModelDefinitionInvalid(str(exc), data={"errors": exc.errors}) from None
    merged = defaults.apply_request(image=image, architecture=architecture, resources=resources,
                                    resource_opts=resource_opts, environ=environ)
    try:
        slots = ResourceSlots.parse(merged.resource_slots or config.limits.default_slots)
    except SlotError as exc:
        raise InvalidAPIParameters(f"config.resources.{exc.field}: {exc.reason}") from None
    chosen = _find_definition(root, definition_path)
    if chosen is None and (variant == "custom" or definition_path):
        tried = definition_path or " or ".join(DEFAULT_DEFINITION_FILES)
        raise ModelDefinitionInvalid(
            f"config.model_definition_path: {tried} not found in model folder {folder.name!r}"
            + (" (the custom variant needs one; or pick a runtime_variant such as vllm or llamacpp)"
               if variant == "custom" else ""),
            data={"errors": [{"field": "config.model_definition_path", "reason": "file not found"}]})
    if chosen is not None:
        try:
            definition = parse_model_definition(chosen.read_bytes(), chosen.name)
            definition.serving_model()
        except DefinitionError as exc:
            raise ModelDefinitionInvalid(str(exc), data={"errors": exc.errors}) from None
        return ResolvedService(definition.model_dump(mode="json"), str(chosen.relative_to(root)), merged, slots)
    try:
        raw = synthesize_definition(variant, mount=mount, environ=merged.environ, shares=slots.get("cuda.shares"),
                                    folder_files=[str(f["path"]) for f in list_files(root)],
                                    service_name=service_name)
        definition = ModelDefinition.model_validate(raw)
    except VariantError as exc:
        raise InvalidAPIParameters(str(exc)) from None
    return ResolvedService(definition.model_dump(mode="json"), None, merged, slots)


async def ensure_unique_name(db: AsyncSession, owner_id: uuid.UUID, name: str) -> None:
    if await name_taken(db, owner_id, name):
        raise Conflict(f"name: a service named {name!r} already exists")
