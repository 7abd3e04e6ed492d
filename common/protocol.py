"""Wire models of the internal channels (ARCHITECTURE §1, §7).

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
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from common.status import KernelStatus, RouteHealth

MAX_KERNELS_PER_HEARTBEAT = 4096


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


class AgentInfo(_Wire):
    agent_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    rpc_url: str  # base URL the manager uses for the agent's RPC API
    replica_host: str  # address at which replicas on this host are reachable by the app proxy
    scaling_group: str = "default"
    architecture: str = "x86_64"
    runtime: str = "local"
    available_slots: dict[str, str] = Field(default_factory=dict)
    version: str = ""


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
    routes: list[RouteTarget] = Field(default_factory=list)
    revoked_token_ids: list[str] = Field(default_factory=list)  # unexpired revoked token ids (jti)
    updated_at: float = 0.0
