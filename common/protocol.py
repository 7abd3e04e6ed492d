"""Wire models of the internal channels (docs/architecture.md, Wire contracts).

* manager → agent (signed HTTP RPC, see :mod:`common.signing`):
  ``POST /rpc/kernels`` with :class:`KernelSpec` (idempotent on ``kernel_id``) → :class:`KernelReport`;
  ``DELETE /rpc/kernels/{kernel_id}`` → ``{"ok": true}`` (idempotent; unknown ids are fine);
  ``GET /rpc/kernels`` → ``{"kernels": [KernelReport...]}``;
  ``GET /rpc/kernels/{kernel_id}/logs?tail=N`` → ``{"stdout": str, "stderr": str}``;
  ``GET /rpc/health`` → :class:`AgentInfo`.
* agent → manager (signed): ``POST /internal/heartbeat`` with :class:`AgentHeartbeat`, sent every
  ``heartbeat_interval`` and at once on any kernel transition. It is level-triggered: it always carries the full
  kernel list, so the manager can rebuild its view from heartbeats alone. Response: :class:`HeartbeatReply`.
* manager → app proxy: :class:`RouteTable` JSON under ``common.store.ROUTES_PREFIX + <endpoint_id>``.
* app proxy → manager (autoscaling): each proxy worker keeps a :class:`ProxyRegistration` under
  ``PROXIES_PREFIX + <proxy_id>`` (leased in etcd, so a dead proxy vanishes); the manager calls its signed
  ``GET {admin_url}/endpoints/{id}/metrics``. A request for an endpoint without routes makes the proxy write a
  :class:`DemandSignal` under ``DEMAND_PREFIX + <endpoint_id>`` (at most once a second per endpoint): the
  manager scales an endpoint at zero replicas back up (scale from zero).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from common.status import KernelStatus, RouteHealth

MAX_KERNELS_PER_HEARTBEAT = 4096
PROXIES_PREFIX = "/moorage/proxies/"  # one leased key per live app proxy worker: ProxyRegistration JSON
DEMAND_PREFIX = "/moorage/demand/"  # one key per endpoint with requests waiting for a route: DemandSignal JSON
MAX_CORS_ORIGINS = 64  # entries of RouteTable.cors_allowed_origins (a handful of web front ends per endpoint)
MAX_ORIGIN_LENGTH = 512  # one origin: scheme, host name (at most 253) and port
UNSANDBOXED_RUNTIME = "local-nosandbox"  # AgentInfo.runtime of an agent whose replicas run without a sandbox
MAX_KERNEL_STATS = 32  # entries of KernelReport.stats (a handful are used; bounds what a heartbeat may carry)


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class KernelSpec(_Wire):
    """Everything an agent needs to start one replica. The definition is resolved by the manager; the agent
    reads no definition files."""

    kernel_id: uuid.UUID  # = session id; chosen by the manager so a retried create is idempotent
    endpoint_id: uuid.UUID
    route_id: uuid.UUID
    endpoint_name: str
    folder_relpath: str  # model folder, relative to the storage root shared by manager and agents
    mount_destination: str = "/models"
    model_definition: dict[str, Any]  # a validated common.definitions.ModelDefinition
    environ: dict[str, str] = Field(default_factory=dict)
    resource_slots: dict[str, str] = Field(default_factory=dict)
    image: str | None = None
    runtime_variant: str = "custom"
    # Whether the replica may open outbound connections (the service's ``network_outbound``, e.g. to download
    # weights). False, and absent from a spec of an older manager: no outbound network at all, only its port is
    # reachable (docs/security.md "Replica network"). Changing it on a service rolls its replicas.
    network_outbound: bool = False


class KernelError(_Wire):
    type: str  # "prestart_failed" | "start_failed" | "exited" | "health_check_failed" | "runtime_error"
    message: str
    exit_code: int | None = None
    stderr_tail: str = ""


class KernelReport(_Wire):
    kernel_id: uuid.UUID
    endpoint_id: uuid.UUID
    route_id: uuid.UUID
    status: KernelStatus
    health: RouteHealth = RouteHealth.NOT_CHECKED
    host: str  # where the app proxy reaches the replica
    port: int
    handle: str | None = None  # pid for `local`, container id for `docker`
    error: KernelError | None = None
    allocation: dict[str, str] = Field(default_factory=dict)  # device-level slots, e.g. {"cuda.shares:GPU-…": "0.5"}
    started_at: float | None = None
    updated_at: float | None = None
    # Last utilisation sample of the replica (input of ``kernel`` autoscaling rules), e.g.
    # {"cpu_util": 37.5, "mem_util": 12.0, "mem_bytes": 52428800, "collected_at": 1767225600.0}.
    # cpu_util: percent of one core (200 = two cores busy); mem_util: percent of the replica's memory limit.
    # None: not sampled yet (or the runtime cannot tell).
    stats: dict[str, float] | None = Field(default=None, max_length=MAX_KERNEL_STATS)


class AgentInfo(_Wire):
    agent_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    rpc_url: str  # base URL the manager uses for the agent's RPC API
    replica_host: str  # address at which replicas on this host are reachable by the app proxy
    scaling_group: str = "default"
    architecture: str = "x86_64"
    runtime: str = "local"
    available_slots: dict[str, str] = Field(default_factory=dict)
    version: str = ""
    # GPU uuids (one cuda.share each), so the scheduler can tell whether a fraction fits on one device
    devices: list[str] = Field(default_factory=list, max_length=256)


class AgentHeartbeat(AgentInfo):
    kernels: list[KernelReport] = Field(default_factory=list, max_length=MAX_KERNELS_PER_HEARTBEAT)


class HeartbeatReply(_Wire):
    ok: bool = True
    # Kernels the manager does not know (or wants gone); the agent destroys them. Orphans left by a crash of
    # the manager between starting a kernel and recording it are cleaned up this way.
    destroy: list[uuid.UUID] = Field(default_factory=list)


class RouteTarget(_Wire):
    route_id: uuid.UUID
    host: str
    port: int
    traffic_ratio: float = 1.0


class RouteTable(_Wire):
    """What the app proxies serve for one endpoint: only running + healthy + active routes."""

    endpoint_id: uuid.UUID
    name: str
    port: int | None = None  # port-mode listen port (stable for the endpoint's life)
    subdomain: str | None = None  # wildcard mode: served at <subdomain>.<wildcard domain>; unique among live endpoints
    open_to_public: bool = False
    # The endpoint's owner: the gateway serves it (as the model ``name``) to that owner's API keys
    # (docs/gateway.md). None from a manager older than the gateway: then only superadmins' keys reach it.
    owner_id: uuid.UUID | None = None
    routes: list[RouteTarget] = Field(default_factory=list)
    revoked_token_ids: list[str] = Field(default_factory=list)  # unexpired revoked token ids (jti)
    # Whether a request that finds no route should be held (a replica is starting, or the endpoint is at zero
    # replicas and an autoscaling rule will wake it) rather than answered 503 at once (failing starts, no rule).
    hold_requests: bool = True
    # Gateway requests one route of this endpoint serves at once before more wait in the gateway's priority queue
    # (docs/gateway.md); None: the proxy's [gateway] default_route_capacity.
    route_capacity: int | None = Field(default=None, ge=1)
    # More model names the gateway serves this endpoint under, and the "model" it writes into request bodies for
    # the engine (None: the client's, as sent) (docs/gateway.md, Model aliases).
    aliases: list[str] = Field(default_factory=list, max_length=32)
    engine_model_name: str | None = Field(default=None, max_length=256)
    # Origins whose browser pages may call this endpoint (CORS, answered by the app proxy: appproxy.cors), e.g.
    # ["https://chat.example.com", "http://localhost:3000"], or ["*"] for any origin. Empty: none.
    cors_allowed_origins: list[Annotated[str, Field(max_length=MAX_ORIGIN_LENGTH)]] = Field(
        default_factory=list, max_length=MAX_CORS_ORIGINS)
    updated_at: float = 0.0


class ProxyRegistration(_Wire):
    """What an app proxy worker registers so that the manager can read its per-endpoint metrics."""

    proxy_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    admin_url: str = Field(max_length=512)  # base URL of the signed admin API (appproxy.admin)
    worker_index: int = 0
    started_at: float = 0.0


class DemandSignal(_Wire):
    """Requests are waiting at an app proxy for an endpoint whose route table has no routes."""

    endpoint_id: uuid.UUID
    at: float  # unix time of the (latest) request that found no route
    held: int = 0  # requests this proxy holds for the endpoint right now
    proxy_id: str = ""
