"""``model-definition.yaml`` and ``service-definition.toml`` schemas
(docs/architecture.md, Model folders and definitions).

Parsing errors are raised as :class:`DefinitionError` whose message names the offending field, e.g.
``models.0.service.port: Input should be greater than 1``.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from typing import Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from common.slots import ResourceSlots, SlotError

RESERVED_PORTS = frozenset({2000, 2001, 2002, 2003, 2200, 7681})
MAX_DEFINITION_BYTES = 256 * 1024
DEFAULT_DEFINITION_FILES = ("model-definition.yaml", "model-definition.yml")
SERVICE_DEFINITION_FILE = "service-definition.toml"
PRE_START_ACTIONS = ("write_file", "write_tempfile", "run_command", "mkdir", "log")


_SAFE_ARG = re.compile(r"^[\w@%+=:,./{}-]+$")


def _quote_arg(arg: str) -> str:
    """shlex.quote, but leave ``{placeholder}`` words bare so they read naturally after joining."""
    return arg if _SAFE_ARG.match(arg) else shlex.quote(arg)


class DefinitionError(ValueError):
    """A definition file is invalid. ``errors`` lists ``{field, reason}``; ``str()`` names them all."""

    def __init__(self, message: str, errors: list[dict[str, str]] | None = None, source: str | None = None):
        super().__init__(message)
        self.errors = errors or []
        self.source = source


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class PreStartAction(_Strict):
    action: Literal["write_file", "write_tempfile", "run_command", "mkdir", "log"]
    args: dict[str, Any] = Field(default_factory=dict)
    ref: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class ModelHealthCheck(_Strict):
    """Active HTTP health check. Timing contract (docs/architecture.md, Active health checks): a route that
    never passes is unhealthy after ``initial_delay + interval × (max_retries + 1)``; a healthy one after
    ``interval × (max_retries + 1)`` of consecutive failures.

    ``enable`` defaults to true: writing the section means wanting the check (Backend.AI classic semantics;
    HEAD's default of false silently disables checks users wrote).
    """

    enable: bool = True
    path: str = Field(default="/health", pattern=r"^/[^\s]*$", max_length=1024)
    interval: float = Field(default=10.0, gt=0, le=3600)
    max_retries: int = Field(default=10, ge=0, le=10_000)
    max_wait_time: float = Field(default=15.0, gt=0, le=3600)
    expected_status_code: int = Field(default=200, gt=100, lt=600)
    initial_delay: float = Field(default=60.0, ge=0, le=86_400)


class ModelServiceConfig(_Strict):
    pre_start_actions: list[PreStartAction] = Field(default_factory=list, max_length=64)
    start_command: str | None = Field(
        default=None, validation_alias=AliasChoices("start_command", "command", "start-command")
    )
    shell: str | None = "/bin/bash"
    port: int = Field(gt=1, lt=65536)
    health_check: ModelHealthCheck | None = None

    @field_validator("start_command", mode="before")
    @classmethod
    def _join_list(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not all(isinstance(part, (str, int, float)) for part in value):
                raise ValueError("a start_command list must hold strings")
            return " ".join(_quote_arg(str(part)) for part in value)
        return value

    @field_validator("port")
    @classmethod
    def _not_reserved(cls, value: int) -> int:
        if value in RESERVED_PORTS:
            raise ValueError(f"port {value} is reserved ({sorted(RESERVED_PORTS)})")
        return value

    def argv(self, command: str) -> list[str]:
        """The argv that runs ``command``: ``[shell, -c, command]``, or ``shlex.split`` without a shell."""
        if self.shell:
            return [self.shell, "-c", command]
        return shlex.split(command)


class ModelMetadata(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    author: str | None = None
    title: str | None = None
    version: str | int | float | None = None
    created: str | None = Field(default=None, validation_alias=AliasChoices("created", "created_at"))
    last_modified: str | None = Field(
        default=None, validation_alias=AliasChoices("last_modified", "modified_at")
    )
    description: str | None = None
    task: str | None = None
    category: str | None = None
    architecture: str | None = None
    framework: list[str] = Field(default_factory=list)
    label: list[str] = Field(default_factory=list)
    license: str | None = None
    min_resource: dict[str, Any] = Field(default_factory=dict)


class ModelConfig(_Strict):
    name: str = Field(min_length=1, max_length=256)
    model_path: str = Field(min_length=1, max_length=1024)
    service: ModelServiceConfig | None = None
    metadata: ModelMetadata | None = None

    @field_validator("model_path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must be an absolute path inside the replica, e.g. /models")
        return value


class ModelDefinition(_Strict):
    models: list[ModelConfig] = Field(default_factory=list, max_length=16)

    def serving_model(self) -> ModelConfig:
        """The model whose service the replica runs: the first with a service."""
        for model in self.models:
            if model.service is not None:
                return model
        raise DefinitionError(
            "models: no model defines a 'service' section to start",
            [{"field": "models", "reason": "no model defines a 'service' section"}],
        )

    def health_check(self) -> ModelHealthCheck | None:
        """The first model's enabled health check (only one is used for the endpoint)."""
        for model in self.models:
            if model.service and model.service.health_check and model.service.health_check.enable:
                return model.service.health_check
        return None


def _validation_to_definition_error(exc: ValidationError, source: str) -> DefinitionError:
    errors = [
        {"field": ".".join(str(p) for p in err["loc"]) or "(root)", "reason": err["msg"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]
    message = f"{source}: " + "; ".join(f"{e['field']}: {e['reason']}" for e in errors)
    return DefinitionError(message, errors, source)


def parse_model_definition(text: str | bytes, source: str = "model-definition.yaml") -> ModelDefinition:
    """Parse and validate a model definition; raise :class:`DefinitionError` naming the bad field."""
    if len(text) > MAX_DEFINITION_BYTES:
        raise DefinitionError(f"{source}: larger than {MAX_DEFINITION_BYTES} bytes", source=source)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        pos = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise DefinitionError(
            f"{source}: invalid YAML{pos}: {getattr(exc, 'problem', exc)}",
            [{"field": "(yaml)", "reason": f"invalid YAML{pos}"}],
            source,
        ) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise DefinitionError(f"{source}: the document must be a mapping with a 'models' list",
                              [{"field": "(root)", "reason": "must be a mapping"}], source)
    try:
        return ModelDefinition.model_validate(raw)
    except ValidationError as exc:
        raise _validation_to_definition_error(exc, source) from None


class _EnvironmentSection(_Strict):
    image: str | None = None
    architecture: str | None = None


class _DeploymentSection(_Strict):
    environment: _EnvironmentSection = Field(default_factory=_EnvironmentSection)
    resource_slots: dict[str, Any] = Field(default_factory=dict)
    resource_opts: dict[str, Any] = Field(default_factory=dict)
    environ: dict[str, str] = Field(default_factory=dict)

    @field_validator("resource_slots")
    @classmethod
    def _slots(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            ResourceSlots.parse(value)
        except SlotError as exc:
            raise ValueError(f"{exc.field}: {exc.reason}") from None
        return value


class ServiceDefinition(BaseModel):
    """``service-definition.toml``: root tables plus tables named after runtime variants that override them."""

    model_config = ConfigDict(extra="allow")

    environment: _EnvironmentSection = Field(default_factory=_EnvironmentSection)
    resource_slots: dict[str, Any] = Field(default_factory=dict)
    resource_opts: dict[str, Any] = Field(default_factory=dict)
    environ: dict[str, str] = Field(default_factory=dict)

    def variant_section(self, variant: str) -> _DeploymentSection | None:
        raw = (self.model_extra or {}).get(variant)
        if raw is None:
            return None
        return _DeploymentSection.model_validate(raw)

    def resolve(self, variant: str) -> ResolvedServiceDefaults:
        """Merge root < variant section, field by field; ``environ`` maps are merged."""
        out = ResolvedServiceDefaults(
            image=self.environment.image,
            architecture=self.environment.architecture,
            resource_slots=dict(self.resource_slots),
            resource_opts=dict(self.resource_opts),
            environ=dict(self.environ),
        )
        section = self.variant_section(variant)
        if section is not None:
            out.image = section.environment.image or out.image
            out.architecture = section.environment.architecture or out.architecture
            out.resource_slots.update(section.resource_slots)
            out.resource_opts.update(section.resource_opts)
            out.environ.update(section.environ)
        return out


class ResolvedServiceDefaults(BaseModel):
    image: str | None = None
    architecture: str | None = None
    resource_slots: dict[str, Any] = Field(default_factory=dict)
    resource_opts: dict[str, Any] = Field(default_factory=dict)
    environ: dict[str, str] = Field(default_factory=dict)

    def apply_request(
        self,
        *,
        image: str | None,
        architecture: str | None,
        resources: dict[str, Any] | None,
        resource_opts: dict[str, Any] | None,
        environ: dict[str, str] | None,
    ) -> ResolvedServiceDefaults:
        """Layer an API request on top (the request wins field by field)."""
        return ResolvedServiceDefaults(
            image=image or self.image,
            architecture=architecture or self.architecture,
            resource_slots={**self.resource_slots, **(resources or {})},
            resource_opts={**self.resource_opts, **(resource_opts or {})},
            environ={**self.environ, **(environ or {})},
        )


def parse_service_definition(text: str | bytes, source: str = SERVICE_DEFINITION_FILE) -> ServiceDefinition:
    if len(text) > MAX_DEFINITION_BYTES:
        raise DefinitionError(f"{source}: larger than {MAX_DEFINITION_BYTES} bytes", source=source)
    try:
        raw = tomllib.loads(text.decode() if isinstance(text, bytes) else text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DefinitionError(f"{source}: invalid TOML: {exc}", [{"field": "(toml)", "reason": str(exc)}],
                              source) from None
    try:
        parsed = ServiceDefinition.model_validate(raw)
        for name, value in (parsed.model_extra or {}).items():
            if not isinstance(value, dict):
                raise DefinitionError(f"{source}: {name}: must be a table named after a runtime variant",
                                      [{"field": name, "reason": "must be a table"}], source)
            try:
                parsed.variant_section(name)
            except ValidationError as exc:
                err = _validation_to_definition_error(exc, source)
                for item in err.errors:
                    item["field"] = f"{name}.{item['field']}"
                raise DefinitionError(
                    f"{source}: " + "; ".join(f"{e['field']}: {e['reason']}" for e in err.errors),
                    err.errors, source) from None
        ResourceSlots.parse(parsed.resource_slots)
        return parsed
    except ValidationError as exc:
        raise _validation_to_definition_error(exc, source) from None
    except SlotError as exc:
        raise DefinitionError(f"{source}: resource_slots.{exc.field}: {exc.reason}",
                              [{"field": f"resource_slots.{exc.field}", "reason": exc.reason}], source) from None
