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


@dataclasses.dataclass(frozen=True)
class ScaleResult:
    current_route_count: int  # provisioning or running when the request came
    target_count: int


class ServiceConfigSpec(Protocol):
    """What a new service's ``config`` gives (the API's ServiceConfigModel has these and more)."""

    @property
    def model(self) -> str: ...
    @property
    def model_definition_path(self) -> str | None: ...
    @property
    def model_mount_destination(self) -> str: ...
    @property
    def scaling_group(self) -> str: ...
    @property
    def extra_mounts(self) -> dict[str, Any]: ...
    @property
    def environ(self) -> dict[str, str] | None: ...
    @property
    def resources(self) -> dict[str, Any] | None: ...
    @property
    def resource_opts(self) -> dict[str, Any] | None: ...


class NewServiceSpec(Protocol):
    """What creating (or trying) a service takes: the validated request (the API's NewServiceRequest)."""

    @property
    def name(self) -> str: ...
    @property
    def replicas(self) -> int: ...
    @property
    def image(self) -> str | None: ...
    @property
    def runtime_variant(self) -> str: ...
    @property
    def architecture(self) -> str | None: ...
    @property
    def group(self) -> str: ...
    @property
    def domain(self) -> str: ...
    @property
    def cluster_size(self) -> int: ...
    @property
    def cluster_mode(self) -> str: ...
    @property
    def tag(self) -> str | None: ...
    @property
    def startup_command(self) -> str | None: ...
    @property
    def bootstrap_script(self) -> str | None: ...
    @property
    def callback_url(self) -> str | None: ...
    @property
    def owner_access_key(self) -> str | None: ...
    @property
    def open_to_public(self) -> bool: ...
    @property
    def cors_allowed_origins(self) -> list[str]: ...
    @property
    def network_outbound(self) -> bool: ...
    @property
    def config(self) -> ServiceConfigSpec: ...


class ServiceUpdateSpec(Protocol):
    """What ``PATCH /services/{id}`` gives (the API's UpdateServiceRequest); None: keep the current value."""

    @property
    def replicas(self) -> int | None: ...
    @property
    def model(self) -> str | None: ...
    @property
    def model_definition_path(self) -> str | None: ...
    @property
    def runtime_variant(self) -> str | None: ...
    @property
    def image(self) -> str | None: ...
    @property
    def environ(self) -> dict[str, str] | None: ...
    @property
    def resources(self) -> dict[str, Any] | None: ...
    @property
    def resource_opts(self) -> dict[str, Any] | None: ...
    @property
    def open_to_public(self) -> bool | None: ...
    @property
    def cors_allowed_origins(self) -> list[str] | None: ...
    @property
    def network_outbound(self) -> bool | None: ...
    @property
    def max_surge(self) -> int | None: ...
    @property
    def redeploy(self) -> bool: ...
