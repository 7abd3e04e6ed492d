"""Manager configuration (``configs/manager.toml``; every key overridable by ``MOORAGE_MANAGER__SECTION__KEY``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from common.config import load_config, read_secret


class ManagerSection(BaseModel):
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=8090, ge=0, le=65535)
    public_url: str | None = None  # what clients use; default http://listen_host:listen_port
    storage_root: Path = Path("/var/lib/moorage/storage")  # model folders; shared with agents (NFS in a cluster)
    auto_migrate: bool = False  # run `alembic upgrade head` at start (embedded mode does)


class DatabaseSection(BaseModel):
    url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/moorage"


class EtcdSection(BaseModel):
    host: str = "127.0.0.1"
    port: int = 2379
    namespace: str = ""


class AppProxySection(BaseModel):
    """Where endpoint URLs point; must match the app proxies' ``frontend``. Port mode: the manager assigns each
    endpoint a port from ``port_range`` once and every app proxy serves it there. Wildcard mode: each endpoint
    gets a subdomain (its name, made unique) served at ``<subdomain><wildcard_domain>``."""

    frontend: Literal["port", "wildcard"] = "port"
    public_host: str = "127.0.0.1"
    scheme: Literal["http", "https"] = "http"
    port_range: tuple[int, int] = (10300, 10999)
    wildcard_domain: str = ""  # e.g. ".apps.example.com"
    wildcard_port: int | None = Field(default=None, ge=1, le=65535)  # in URLs unless 80/443

    @model_validator(mode="after")
    def _range(self) -> AppProxySection:
        lo, hi = self.port_range
        if not (1024 <= lo <= hi <= 65535):
            raise ValueError("port_range must be [low, high] within 1024..65535")
        if self.frontend == "wildcard" and not self.wildcard_domain.startswith("."):
            raise ValueError("wildcard_domain must be set and start with '.', e.g. '.apps.example.com'")
        return self


class SecretsSection(BaseModel):
    cluster_secret: str | None = None  # signs manager <-> agent calls
    cluster_secret_file: str | None = None
    jwt_secret: str | None = None  # signs endpoint tokens; shared with the app proxies only
    jwt_secret_file: str | None = None


class ReconcileSection(BaseModel):
    # Tick period of the control loops; API changes also wake them at once (a scale acts within a second).
    interval: float = Field(default=2.0, gt=0)
    # An agent without heartbeat this long is lost: its routes leave traffic at once and are replaced.
    # Agents beat every 3 s by default, so 15 s tolerates four missed beats.
    agent_heartbeat_timeout: float = Field(default=15.0, gt=0)
    # A kernel the manager started but its agent does not list after this long is considered gone.
    kernel_report_grace: float = Field(default=20.0, gt=0)
    # Failed starts back off exponentially per endpoint, capped, instead of Backend.AI's hard stop after 5.
    backoff_base: float = Field(default=2.0, gt=0)
    backoff_max: float = Field(default=300.0, gt=0)
    rpc_timeout: float = Field(default=30.0, gt=0)


class LimitsSection(BaseModel):
    max_replicas: int = Field(default=64, ge=1)  # per endpoint (Backend.AI: max_session_count_per_model_session)
    max_upload_bytes: int = Field(default=16 * 1024**3, ge=1)  # per upload request; model weights are large
    max_upload_files: int = Field(default=10_000, ge=1)
    max_json_body: int = Field(default=1024 * 1024, ge=1024)
    max_token_lifetime_seconds: int = Field(default=10 * 365 * 86400, ge=60)
    default_slots: dict[str, Any] = Field(default_factory=lambda: {"cpu": "1", "mem": "1g"})


class ManagerConfig(BaseModel):
    manager: ManagerSection = Field(default_factory=ManagerSection)
    db: DatabaseSection = Field(default_factory=DatabaseSection)
    etcd: EtcdSection = Field(default_factory=EtcdSection)
    appproxy: AppProxySection = Field(default_factory=AppProxySection)
    secrets: SecretsSection = Field(default_factory=SecretsSection)
    reconcile: ReconcileSection = Field(default_factory=ReconcileSection)
    limits: LimitsSection = Field(default_factory=LimitsSection)

    @property
    def public_url(self) -> str:
        m = self.manager
        return (m.public_url or f"http://{m.listen_host}:{m.listen_port}").rstrip("/")

    def cluster_secret(self) -> str:
        return read_secret(self.secrets.cluster_secret, self.secrets.cluster_secret_file, "secrets.cluster_secret")

    def jwt_secret(self) -> str:
        return read_secret(self.secrets.jwt_secret, self.secrets.jwt_secret_file, "secrets.jwt_secret")


def load_manager_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> ManagerConfig:
    return load_config(ManagerConfig, path, "MOORAGE_MANAGER", overrides)
