"""Plain values the service domain returns: an endpoint with its routes, a compact summary, a scale result."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any, Protocol

from common.status import EndpointLifecycle, RouteHealth, RouteLifecycle, RouteTraffic
from manager.db.models import Endpoint, Route, Session


@dataclasses.dataclass(frozen=True)
class RouteRow:
    """An unterminated route, its session (None before one is placed) and that session's agent's runtime."""

    route: Route
    session: Session | None
    runtime: str | None


@dataclasses.dataclass(frozen=True)
class ServiceSnapshot:
    """An endpoint and its unterminated routes, oldest first (what ``GET /services/{id}`` and GraphQL show)."""

    endpoint: Endpoint
    routes: list[RouteRow]


RouteAxes = tuple[RouteLifecycle, RouteHealth, RouteTraffic]


@dataclasses.dataclass(frozen=True)
class ServiceSummary:
    """The columns of the compact list (``GET /services``) and the state axes of its unterminated routes."""

    id: uuid.UUID
    name: str
    replicas: int
    url: str | None
    is_public: bool
    lifecycle: EndpointLifecycle
    routes: list[RouteAxes]


@dataclasses.dataclass(frozen=True)
class SearchPage:
    """A page of ``POST /services/_/search``: the endpoints, their active route counts and the total."""

    endpoints: list[Endpoint]
    active_counts: dict[uuid.UUID, int]
    total: int
    # each endpoint's live routes as (lifecycle, health), for its derived status; owners' e-mails by user id
    route_states: dict[uuid.UUID, list[tuple[RouteLifecycle, RouteHealth]]] = dataclasses.field(default_factory=dict)
    owner_emails: dict[uuid.UUID, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ScaleResult:
    current_route_count: int  # provisioning or running when the request came
    target_count: int


class ServiceConfigSpec(Protocol):
    """What a new service's ``config`` gives (the API's ServiceConfigModel has these and more). The three specs
    are structural: the API's pydantic request models satisfy them, and the domain does not import the API."""

    model: str
    model_definition_path: str | None
    model_mount_destination: str
    scaling_group: str
    extra_mounts: dict[str, Any]
    environ: dict[str, str] | None
    resources: dict[str, Any] | None
    resource_opts: dict[str, Any] | None


class NewServiceSpec(Protocol):
    """What creating (or trying) a service takes: the validated request (the API's NewServiceRequest)."""

    name: str
    replicas: int
    image: str | None
    runtime_variant: str
    architecture: str | None
    group: str
    domain: str
    cluster_size: int
    cluster_mode: str
    tag: str | None
    startup_command: str | None
    bootstrap_script: str | None
    callback_url: str | None
    owner_access_key: str | None
    open_to_public: bool
    cors_allowed_origins: list[str]
    network_outbound: bool
    route_capacity: int | None
    model_aliases: list[str]
    engine_model_name: str | None

    @property
    def config(self) -> ServiceConfigSpec: ...  # read-only: any model that fits, not this type exactly


class ServiceUpdateSpec(Protocol):
    """What ``PATCH /services/{id}`` gives (the API's UpdateServiceRequest); None: keep the current value."""

    replicas: int | None
    model: str | None
    model_definition_path: str | None
    runtime_variant: str | None
    image: str | None
    environ: dict[str, str] | None
    resources: dict[str, Any] | None
    resource_opts: dict[str, Any] | None
    open_to_public: bool | None
    cors_allowed_origins: list[str] | None
    network_outbound: bool | None
    route_capacity: int | None
    model_aliases: list[str] | None
    engine_model_name: str | None
    max_surge: int | None
    redeploy: bool
