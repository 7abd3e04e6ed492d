"""Request and response bodies of the service launcher API: Backend.AI wire shapes (docs/architecture.md,
Service API)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
)

from common.protocol import MAX_CORS_ORIGINS, MAX_ORIGIN_LENGTH
from manager.api import fields
from manager.api.fields import NAME_PATTERN, SERVICE_NAME_MAX, SERVICE_NAME_MIN

# Counts and durations are strict integers everywhere (true is not 1). Token lifetimes are bounded here so that
# no arithmetic on them can overflow; the configured limits.max_token_lifetime_seconds applies after.
MAX_TIMESTAMP = 10**11  # seconds since 1970: year 5138

Origin = Annotated[str, Field(max_length=MAX_ORIGIN_LENGTH)]
CORS_DESCRIPTION = (
    "Origins whose browser pages may call the service (CORS, answered by the app proxy): scheme://host[:port] "
    f"with http or https, or \"*\" for any origin; at most {MAX_CORS_ORIGINS}. Stored as browsers send them (lower "
    "case, no trailing slash). Empty (the default): no cross-origin browser request is allowed.")
MAX_ALIASES = 16
ModelAlias = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$")]
EngineModelName = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$")]
ALIASES_DESCRIPTION = (
    "More model names the gateway serves this service under (besides its name), e.g. gpt-4o-mini or "
    "meta-llama/Llama-3.1-8B-Instruct (docs/gateway.md).")
ENGINE_NAME_DESCRIPTION = (
    "The model name the engine expects: the gateway writes it into the request's model field. Default: the "
    "client's model is passed through.")
ROUTE_CAPACITY_DESCRIPTION = (
    "Gateway requests one replica serves at once; more wait in the gateway's priority queue (docs/gateway.md). "
    "Default: the app proxy's [gateway] default_route_capacity.")
OUTBOUND_DESCRIPTION = (
    "Whether replicas may open outbound network connections (e.g. to download weights). Default false: a "
    "replica reaches nothing beyond its own port. Changing it rolls the replicas (a new revision).")


class _Req(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", str_max_length=64 * 1024)


class ServiceConfigModel(_Req):
    model: str = Field(min_length=1, max_length=128)  # model folder name or UUID
    model_definition_path: str | None = Field(default=None, max_length=128)
    model_version: int | str | None = Field(default=1, validation_alias=AliasChoices("model_version", "modelVersion"))
    model_mount_destination: str = Field(
        default="/models", max_length=256,
        validation_alias=AliasChoices("model_mount_destination", "modelMountDestination"))
    vfolder_subpath: str | None = Field(default=None, validation_alias=AliasChoices("vfolder_subpath",
                                                                                    "vfolderSubpath"))
    extra_mounts: dict[str, Any] = Field(default_factory=dict, max_length=32)
    environ: dict[str, str] | None = Field(default=None, max_length=256)
    scaling_group: str = Field(default="default", max_length=64,
                               validation_alias=AliasChoices("scaling_group", "scalingGroup"))
    resources: dict[str, str | int | float] | None = Field(default=None, max_length=32)
    resource_opts: dict[str, Any] | None = Field(default=None, max_length=32)

    _environ = field_validator("environ")(fields.check_environ)
    _mount = field_validator("model_mount_destination")(fields.check_mount)
    _extra_mounts = field_validator("extra_mounts")(fields.check_extra_mounts)
    _definition_path = field_validator("model_definition_path")(fields.check_definition_path)


class NewServiceRequest(_Req):
    name: str = Field(min_length=SERVICE_NAME_MIN, max_length=SERVICE_NAME_MAX, pattern=NAME_PATTERN,
                      validation_alias=AliasChoices("name", "service_name", "clientSessionToken"))
    replicas: int = Field(ge=0, strict=True, validation_alias=AliasChoices("replicas", "desired_session_count",
                                                              "desiredSessionCount"))
    image: str | None = Field(default=None, max_length=512, validation_alias=AliasChoices("image", "lang"))
    runtime_variant: str = Field(default="custom", max_length=32)
    architecture: str | None = Field(default=None, max_length=32,
                                     validation_alias=AliasChoices("arch", "architecture"))
    group: str = Field(default="default", max_length=64, validation_alias=AliasChoices("group", "groupName"))
    domain: str = Field(default="default", max_length=64, validation_alias=AliasChoices("domain", "domainName"))
    cluster_size: int = Field(default=1, ge=1, le=1, strict=True, validation_alias=AliasChoices("cluster_size",
                                                                                   "clusterSize"))
    cluster_mode: str = Field(default="single-node", validation_alias=AliasChoices("cluster_mode",
                                                                                   "clusterMode"))
    tag: str | None = Field(default=None, max_length=64)
    startup_command: str | None = Field(default=None, max_length=16 * 1024,
                                        validation_alias=AliasChoices("startup_command", "startupCommand"))
    bootstrap_script: str | None = Field(default=None, max_length=16 * 1024,
                                         validation_alias=AliasChoices("bootstrap_script", "bootstrapScript"))
    callback_url: str | None = Field(default=None, max_length=1024,
                                     validation_alias=AliasChoices("callback_url", "callbackUrl", "CallbackURL"))
    owner_access_key: str | None = Field(default=None, max_length=32)
    open_to_public: bool = False
    # extensions (the official client never sends them; the defaults are the safe ones)
    cors_allowed_origins: list[Origin] = Field(default_factory=list, max_length=MAX_CORS_ORIGINS,
                                               description=CORS_DESCRIPTION)
    network_outbound: StrictBool = Field(default=False, description=OUTBOUND_DESCRIPTION)
    route_capacity: StrictInt | None = Field(default=None, ge=1, le=100_000, description=ROUTE_CAPACITY_DESCRIPTION)
    model_aliases: list[ModelAlias] = Field(default_factory=list, max_length=MAX_ALIASES,
                                            description=ALIASES_DESCRIPTION)
    engine_model_name: EngineModelName | None = Field(default=None, description=ENGINE_NAME_DESCRIPTION)
    config: ServiceConfigModel

    _aliases = field_validator("model_aliases")(fields.check_aliases)

    _cors = field_validator("cors_allowed_origins")(fields.check_cors_origins)

    @field_validator("cluster_mode")
    @classmethod
    def _cluster_mode(cls, value: str) -> str:
        normalized = value.lower().replace("_", "-")
        if normalized not in ("single-node", "multi-node"):
            raise ValueError("must be 'single-node' or 'multi-node'")
        if normalized == "multi-node":
            raise ValueError("multi-node replicas are not supported")
        return normalized


class ScaleRequest(_Req):
    to: int = Field(ge=0, strict=True)


class UpdateServiceRequest(_Req):
    """``PATCH /services/{id}`` (our extension). Fields left out keep their value. A change to what a replica
    runs (folder, definition, variant, image, environ, resources) — or ``redeploy`` — starts a rolling update."""

    replicas: int | None = Field(default=None, ge=0, strict=True, validation_alias=AliasChoices(
        "replicas", "desired_session_count", "desiredSessionCount"))
    model: str | None = Field(default=None, min_length=1, max_length=128,
                              validation_alias=AliasChoices("model", "model_id"))  # folder name or UUID
    model_definition_path: str | None = Field(default=None, max_length=128)
    runtime_variant: str | None = Field(default=None, max_length=32)
    image: str | None = Field(default=None, max_length=512)
    environ: dict[str, str] | None = Field(default=None, max_length=256)  # replaces the whole environment
    resources: dict[str, str | int | float] | None = Field(default=None, max_length=32)
    resource_opts: dict[str, Any] | None = Field(default=None, max_length=32)
    open_to_public: bool | None = None
    cors_allowed_origins: list[Origin] | None = Field(default=None, max_length=MAX_CORS_ORIGINS,
                                                      description=CORS_DESCRIPTION + " Replaces the whole list.")
    network_outbound: StrictBool | None = Field(default=None, description=OUTBOUND_DESCRIPTION)
    route_capacity: StrictInt | None = Field(default=None, ge=1, le=100_000, description=ROUTE_CAPACITY_DESCRIPTION
                                             + " null: back to the proxies' default.")
    model_aliases: list[ModelAlias] | None = Field(default=None, max_length=MAX_ALIASES,
                                                   description=ALIASES_DESCRIPTION + " Replaces the whole list.")
    engine_model_name: EngineModelName | None = Field(default=None, description=ENGINE_NAME_DESCRIPTION +
                                                      " null: pass it through.")
    _aliases = field_validator("model_aliases")(fields.check_aliases)
    max_surge: int | None = Field(default=None, ge=1, le=64, strict=True)  # extra routes a rollout may start at once
    redeploy: bool = False  # roll every replica even if nothing changed (e.g. the folder's weights did)

    _environ = field_validator("environ")(fields.check_environ)
    _definition_path = field_validator("model_definition_path")(fields.check_definition_path)
    _cors = field_validator("cors_allowed_origins")(fields.check_cors_origins)


class TokenRequest(_Req):
    duration: StrictInt | StrictFloat | StrictStr | None = Field(default=None)
    valid_until: StrictInt | None = Field(default=None, gt=0, le=MAX_TIMESTAMP)

    @field_validator("duration")
    @classmethod
    def _duration(cls, value: int | float | str | None) -> int | float | str | None:
        if isinstance(value, str) and len(value) > 32:
            raise ValueError("at most 32 characters, e.g. '30d'")
        if isinstance(value, (int, float)) and not 0 < value <= MAX_TIMESTAMP:
            raise ValueError(f"must be a positive number of seconds up to {MAX_TIMESTAMP}")
        return value


class NewFolderRequest(_Req):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    usage_mode: str = Field(default="model", pattern=r"^(model|general|data)$")
    host: str | None = Field(default=None, max_length=64)  # Backend.AI compatibility; there is one storage root

    _not_uuid = field_validator("name")(fields.check_not_uuid)


class StringFilter(_Req):
    """HEAD's StringFilter: one condition on a string field."""

    equals: str | None = Field(default=None, max_length=256)
    not_equals: str | None = Field(default=None, max_length=256)
    i_equals: str | None = Field(default=None, max_length=256)
    contains: str | None = Field(default=None, max_length=256)
    i_contains: str | None = Field(default=None, max_length=256)
    starts_with: str | None = Field(default=None, max_length=256)
    ends_with: str | None = Field(default=None, max_length=256)


class SearchFilter(_Req):
    name: StringFilter | None = None


class SearchServicesRequest(_Req):
    filter: SearchFilter | None = None
    # extension (the console's list): "active" (default: every service not yet destroyed) or "destroyed"
    lifecycle: str = Field(default="active", pattern=r"^(active|destroyed)$")
    offset: int = Field(default=0, ge=0, le=1_000_000, strict=True)
    limit: int = Field(default=20, ge=1, le=100, strict=True)


class RouteTrafficRequest(_Req):
    traffic_ratio: float = Field(ge=0, le=1_000_000, allow_inf_nan=False)


# -- responses (the handlers build these; /openapi.json documents them) ---------------------------------------

class _Resp(BaseModel):
    model_config = ConfigDict(extra="allow")


SANDBOXED_DESCRIPTION = ("False when the replica runs on an agent without a replica sandbox (runtime "
                         "local-nosandbox): its code can reach what the agent's user can.")


class ActiveRoute(_Resp):
    route_id: uuid.UUID
    session_id: uuid.UUID | None
    traffic_ratio: float
    sandboxed: bool = Field(default=True, description=SANDBOXED_DESCRIPTION)  # extension


class RouteInfo(_Resp):
    route_id: uuid.UUID
    session_id: uuid.UUID | None
    lifecycle: str
    status: str
    health: str
    traffic: str
    traffic_ratio: float
    agent: str | None
    host: str | None
    port: int | None
    error_data: dict[str, Any] | None
    created_at: str | None
    revision: int = 1
    sandboxed: bool = Field(default=True, description=SANDBOXED_DESCRIPTION)


class ServeInfo(_Resp):
    """Backend.AI's ServeInfoModel plus our extensions (status, lifecycle, retries, routes)."""

    endpoint_id: uuid.UUID
    model_id: uuid.UUID | None
    extra_mounts: list[str]
    name: str
    replicas: int
    desired_session_count: int
    model_definition_path: str | None
    active_routes: list[ActiveRoute]
    service_endpoint: str | None
    is_public: bool
    runtime_variant: str
    status: str
    lifecycle: str
    retries: int
    next_retry_at: str | None
    image: str | None
    resource_slots: dict[str, Any]
    created_at: str | None
    routes: list[RouteInfo]
    revision: int = 1  # bumped by every PATCH that changes what replicas run
    max_surge: int = 1
    rollout: dict[str, Any] | None = None  # {"revision", "current", "outdated", "serving"} while routes differ
    cors_allowed_origins: list[str] = Field(default_factory=list, description=CORS_DESCRIPTION)
    network_outbound: bool = Field(default=False, description=OUTBOUND_DESCRIPTION)
    route_capacity: int | None = Field(default=None, description=ROUTE_CAPACITY_DESCRIPTION)
    model_aliases: list[str] = Field(default_factory=list, description=ALIASES_DESCRIPTION)
    engine_model_name: str | None = Field(default=None, description=ENGINE_NAME_DESCRIPTION)
    # extensions the console's Edit form pre-fills from
    environ: dict[str, str] = Field(default_factory=dict)
    scaling_group: str = "default"
    model_mount_destination: str = "/models"


class CompactServeInfo(_Resp):
    id: uuid.UUID
    name: str
    replicas: int
    desired_session_count: int
    active_route_count: int
    service_endpoint: str | None
    is_public: bool
    status: str


class SearchItem(_Resp):
    id: uuid.UUID
    name: str
    replicas: int
    desired_session_count: int
    active_route_count: int
    service_endpoint: str | None
    resource_slots: dict[str, Any]
    resource_group: str
    open_to_public: bool
    # extensions (the console's list)
    status: str | None = None
    owner: str | None = None  # the owner's e-mail
    created_at: str | None = None


class Pagination(_Resp):
    total: int
    offset: int
    limit: int


class SearchServicesResponse(_Resp):
    items: list[SearchItem]
    pagination: Pagination


class ScaleResponse(_Resp):
    current_route_count: int
    target_count: int


class TokenResponse(_Resp):
    token: str
    token_id: uuid.UUID
    expires_at: str


class TokenInfo(_Resp):
    token_id: uuid.UUID
    created_at: str
    expires_at: str
    revoked: bool
    expired: bool


class SuccessResponse(_Resp):
    success: bool


class TaskResponse(_Resp):
    task_id: uuid.UUID
    name: str | None = None


class RuntimeInfo(_Resp):
    name: str
    human_readable_name: str


class RuntimesResponse(_Resp):
    runtimes: list[RuntimeInfo]


class ErrorsResponse(_Resp):
    errors: list[dict[str, Any]]
    retries: int
