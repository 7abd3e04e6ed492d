"""SQLAlchemy 2 models (docs/architecture.md, Data model), portable between PostgreSQL (asyncpg) and SQLite (aiosqlite).

Enums are stored as short strings (non-native enums) so that adding a value needs no type migration; JSON
columns use JSONB on PostgreSQL. Routes use orthogonal axes (lifecycle, health, traffic) instead of one status.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from common.apikeys import PriorityClass
from common.status import (
    AgentStatus,
    EndpointLifecycle,
    RouteHealth,
    RouteLifecycle,
    RouteTraffic,
    SessionStatus,
    UserRole,
)

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _enum(cls: type, name: str) -> sa.Enum:
    return sa.Enum(cls, name=name, native_enum=False, length=32, create_constraint=False,
                   values_callable=lambda e: [m.value for m in e], validate_strings=True)


def _now() -> datetime:

    return datetime.now(UTC)


TS = sa.DateTime(timezone=True)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING)


class Domain(Base):
    __tablename__ = "domains"
    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(TS, default=_now)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(sa.String(64))
    domain_name: Mapped[str] = mapped_column(sa.ForeignKey("domains.name", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(TS, default=_now)
    __table_args__ = (sa.UniqueConstraint("domain_name", "name"),)


class User(Base):
    __tablename__ = "users"
    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    email: Mapped[str] = mapped_column(sa.String(128), unique=True)
    role: Mapped[UserRole] = mapped_column(_enum(UserRole, "user_role"), default=UserRole.USER)
    domain_name: Mapped[str] = mapped_column(sa.ForeignKey("domains.name"), default="default")
    is_active: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(TS, default=_now)


class KeyPair(Base):
    __tablename__ = "keypairs"
    access_key: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    # Encrypted (manager/secretbox.py: seal/open), never the secret key itself. The attribute is not called
    # secret_key so that code expecting the plaintext fails loudly instead of signing with ciphertext.
    secret_key_sealed: Mapped[str] = mapped_column("secret_key", sa.String(256))
    user_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role: Mapped[UserRole] = mapped_column(_enum(UserRole, "keypair_role"), default=UserRole.USER)
    is_active: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(TS, default=_now)
    last_used: Mapped[datetime | None] = mapped_column(TS, nullable=True)


class ModelFolder(Base):
    __tablename__ = "model_folders"
    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(sa.String(64))
    owner_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    host_relpath: Mapped[str] = mapped_column(sa.String(256))  # relative to the storage root
    usage_mode: Mapped[str] = mapped_column(sa.String(16), default="model")
    created_at: Mapped[datetime] = mapped_column(TS, default=_now)
    __table_args__ = (sa.UniqueConstraint("owner_id", "name"),)


class Agent(Base):
    __tablename__ = "agents"
    id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    rpc_url: Mapped[str] = mapped_column(sa.String(512))
    replica_host: Mapped[str] = mapped_column(sa.String(256))
    scaling_group: Mapped[str] = mapped_column(sa.String(64), default="default", index=True)
    architecture: Mapped[str] = mapped_column(sa.String(32), default="x86_64")
    runtime: Mapped[str] = mapped_column(sa.String(16), default="local")
    available_slots: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    devices: Mapped[list[str] | None] = mapped_column(JSONType, nullable=True)  # GPU uuids, one share each
    status: Mapped[AgentStatus] = mapped_column(_enum(AgentStatus, "agent_status"), default=AgentStatus.ALIVE)
    version: Mapped[str] = mapped_column(sa.String(32), default="")
    first_contact: Mapped[datetime] = mapped_column(TS, default=_now)
    last_heartbeat: Mapped[datetime] = mapped_column(TS, default=_now)


class Endpoint(Base):
    __tablename__ = "endpoints"
    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(sa.String(64))
    owner_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("users.id"), index=True)
    created_user_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("users.id"))
    domain_name: Mapped[str] = mapped_column(sa.String(64), default="default")
    project_name: Mapped[str] = mapped_column(sa.String(64), default="default")
    scaling_group: Mapped[str] = mapped_column(sa.String(64), default="default")
    model_folder_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("model_folders.id", ondelete="SET NULL"), nullable=True)
    model_definition_path: Mapped[str | None] = mapped_column(sa.String(128), nullable=True)
    model_definition: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)  # resolved at create
    model_mount_destination: Mapped[str] = mapped_column(sa.String(256), default="/models")
    runtime_variant: Mapped[str] = mapped_column(sa.String(32), default="custom")
    image: Mapped[str | None] = mapped_column(sa.String(512), nullable=True)
    architecture: Mapped[str] = mapped_column(sa.String(32), default="x86_64")
    environ: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    resource_slots: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    resource_opts: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    extra_mounts: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    tag: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    startup_command: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    bootstrap_script: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    callback_url: Mapped[str | None] = mapped_column(sa.String(1024), nullable=True)
    cluster_mode: Mapped[str] = mapped_column(sa.String(16), default="single-node")
    cluster_size: Mapped[int] = mapped_column(sa.Integer, default=1)
    replicas: Mapped[int] = mapped_column(sa.Integer, default=1)
    # "service", or "dry_run" for the short-lived endpoint of POST /services/_/try (hidden from listings)
    kind: Mapped[str] = mapped_column(sa.String(16), default="service", server_default="service")
    open_to_public: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    # origins whose browser pages may call the endpoint (published in the route table; the app proxy answers CORS)
    cors_allowed_origins: Mapped[list[str]] = mapped_column(JSONType, default=list, server_default=sa.text("'[]'"))
    # whether replicas may open outbound connections (KernelSpec.network_outbound); part of what a replica runs
    network_outbound: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())
    # gateway requests one replica serves at once before the gateway queues them (published in the route table;
    # None: the proxy's [gateway] default_route_capacity; docs/gateway.md)
    route_capacity: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    # more model names the gateway serves this service under, and the name written into a request's "model" for
    # the engine (None: as the client sent it); both published in the route table (docs/gateway.md)
    model_aliases: Mapped[list[str]] = mapped_column(JSONType, default=list, server_default=sa.text("'[]'"))
    engine_model_name: Mapped[str | None] = mapped_column(sa.String(256), nullable=True)
    proxy_port: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)  # port-mode port, never reused live
    subdomain: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)  # wildcard mode, never reused live
    url: Mapped[str | None] = mapped_column(sa.String(1024), nullable=True)
    lifecycle: Mapped[EndpointLifecycle] = mapped_column(
        _enum(EndpointLifecycle, "endpoint_lifecycle"), default=EndpointLifecycle.CREATED, index=True)
    # bumped by every change to what a replica runs (image, folder, definition, environ, resources); routes of an
    # older revision are retired by the rolling update once enough current ones are healthy
    revision: Mapped[int] = mapped_column(sa.Integer, default=1, server_default="1")
    max_surge: Mapped[int] = mapped_column(sa.Integer, default=1, server_default="1")  # extra routes during a rollout
    retries: Mapped[int] = mapped_column(sa.Integer, default=0)  # consecutive failed starts
    next_retry_at: Mapped[datetime | None] = mapped_column(TS, nullable=True)  # back-off after failed starts
    created_at: Mapped[datetime] = mapped_column(TS, default=_now)
    destroyed_at: Mapped[datetime | None] = mapped_column(TS, nullable=True)
    __table_args__ = (
        # names are unique among the live endpoints of an owner; ports among all live endpoints
        sa.Index("uq_endpoints_owner_name_live", "owner_id", "name", unique=True,
                 postgresql_where=sa.text("lifecycle <> 'destroyed'"),
                 sqlite_where=sa.text("lifecycle <> 'destroyed'")),
        sa.Index("uq_endpoints_proxy_port_live", "proxy_port", unique=True,
                 postgresql_where=sa.text("lifecycle <> 'destroyed'"),
                 sqlite_where=sa.text("lifecycle <> 'destroyed'")),
        sa.Index("uq_endpoints_subdomain_live", "subdomain", unique=True,
                 postgresql_where=sa.text("lifecycle <> 'destroyed'"),
                 sqlite_where=sa.text("lifecycle <> 'destroyed'")),
    )


class Session(Base):
    """One replica's kernel on one agent (single-node sessions: one kernel per session)."""

    __tablename__ = "sessions"
    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    endpoint_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("endpoints.id", ondelete="CASCADE"), index=True)
    route_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, index=True)
    agent_id: Mapped[str | None] = mapped_column(sa.ForeignKey("agents.id", ondelete="SET NULL"), nullable=True,
                                                 index=True)
    runtime_handle: Mapped[str | None] = mapped_column(sa.String(128), nullable=True)
    host: Mapped[str | None] = mapped_column(sa.String(256), nullable=True)
    port: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    occupied_slots: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    status: Mapped[str] = mapped_column(sa.String(32), default=SessionStatus.PENDING, index=True)  # SessionStatus
    status_history: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    # last utilisation the agent reported for this kernel (cpu_util, mem_util, ...): input of `kernel` autoscaling
    stats: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    # {gpu uuid: fraction} the agent reports the kernel holds; None until reported (the scheduler then assumes
    # the agent's best-fit placement)
    allocation: Mapped[dict[str, str] | None] = mapped_column(JSONType, nullable=True)
    created_at: Mapped[datetime] = mapped_column(TS, default=_now)
    terminated_at: Mapped[datetime | None] = mapped_column(TS, nullable=True)


class Route(Base):
    __tablename__ = "routes"
    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    endpoint_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("endpoints.id", ondelete="CASCADE"), index=True)
    session_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("sessions.id", ondelete="SET NULL"), nullable=True)
    lifecycle: Mapped[RouteLifecycle] = mapped_column(
        _enum(RouteLifecycle, "route_lifecycle"), default=RouteLifecycle.PROVISIONING, index=True)
    health: Mapped[RouteHealth] = mapped_column(_enum(RouteHealth, "route_health"),
                                                default=RouteHealth.NOT_CHECKED)
    traffic: Mapped[RouteTraffic] = mapped_column(_enum(RouteTraffic, "route_traffic"),
                                                  default=RouteTraffic.ACTIVE)
    traffic_ratio: Mapped[float] = mapped_column(sa.Float, default=1.0)
    revision: Mapped[int] = mapped_column(sa.Integer, default=1, server_default="1")  # the endpoint revision it runs
    error_data: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    created_at: Mapped[datetime] = mapped_column(TS, default=_now)
    updated_at: Mapped[datetime] = mapped_column(TS, default=_now, onupdate=_now)


def route_serving_clause() -> sa.ColumnElement[bool]:
    """SQL twin of :func:`common.status.route_serving`."""
    return sa.and_(Route.lifecycle == RouteLifecycle.RUNNING, Route.health == RouteHealth.HEALTHY,
                   Route.traffic == RouteTraffic.ACTIVE)


def route_active_clause() -> sa.ColumnElement[bool]:
    """SQL twin of :func:`common.status.route_active`."""
    return sa.and_(Route.lifecycle == RouteLifecycle.RUNNING, Route.traffic == RouteTraffic.ACTIVE)


class EndpointToken(Base):
    """Issued endpoint tokens. Only the id (jti) and metadata are stored, never the token itself."""

    __tablename__ = "endpoint_tokens"
    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    endpoint_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("endpoints.id", ondelete="CASCADE"), index=True)
    owner_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(TS, default=_now)
    expires_at: Mapped[datetime] = mapped_column(TS)
    revoked_at: Mapped[datetime | None] = mapped_column(TS, nullable=True)


class AutoScalingRule(Base):
    __tablename__ = "auto_scaling_rules"
    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    endpoint_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("endpoints.id", ondelete="CASCADE"), index=True)
    metric_source: Mapped[str] = mapped_column(sa.String(32))  # kernel | inference_framework | proxy
    metric_name: Mapped[str] = mapped_column(sa.String(128))
    comparator: Mapped[str | None] = mapped_column(sa.String(32), nullable=True)
    threshold: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    min_threshold: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    max_threshold: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    step_size: Mapped[int] = mapped_column(sa.Integer, default=1)
    cooldown_seconds: Mapped[int] = mapped_column(sa.Integer, default=300)
    min_replicas: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    max_replicas: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    enabled: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(TS, default=_now)
    last_triggered_at: Mapped[datetime | None] = mapped_column(TS, nullable=True)


class ConsoleSession(Base):
    """A web-console login (manager/console/sessions.py): a session cookie, or a one-time login link not yet
    used. Only the SHA-256 of the random secret is stored, so a read of this table logs nobody in; every manager
    sharing the database can serve every session."""

    __tablename__ = "console_sessions"
    id_hash: Mapped[str] = mapped_column(sa.String(64), primary_key=True)  # hex SHA-256 of the secret
    kind: Mapped[str] = mapped_column(sa.String(16))  # session | login_link
    access_key: Mapped[str] = mapped_column(sa.ForeignKey("keypairs.access_key", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(TS, default=_now)
    expires_at: Mapped[datetime] = mapped_column(TS, index=True)


class Event(Base):
    """Append-only audit log: route errors, scheduling failures, autoscaling decisions."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    endpoint_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, nullable=True, index=True)
    route_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, nullable=True)
    kind: Mapped[str] = mapped_column(sa.String(64))
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(TS, default=_now, index=True)


class ApiKey(Base):
    """Gateway API keys (docs/gateway.md). Only the SHA-256 of the key is stored, never the key itself."""

    __tablename__ = "api_keys"
    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    owner_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(sa.String(64))
    key_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    hint: Mapped[str] = mapped_column(sa.String(16))  # the key's first characters, for lists
    allowed_models: Mapped[list[str]] = mapped_column(JSONType, default=list)
    rpm: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    tpm: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)
    max_parallel: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    budget: Mapped[float | None] = mapped_column(sa.Float, nullable=True)  # currency units per month
    expires_at: Mapped[datetime | None] = mapped_column(TS, nullable=True)
    # None: the owner's default (user_key_defaults), else standard
    priority: Mapped[PriorityClass | None] = mapped_column(_enum(PriorityClass, "api_key_priority"), nullable=True)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(TS, default=_now)
    revoked_at: Mapped[datetime | None] = mapped_column(TS, nullable=True)


class UsageRecordRow(Base):
    """One gateway request (docs/gateway.md), written in batches by the app proxies."""

    __tablename__ = "usage_records"
    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    request_id: Mapped[str] = mapped_column(sa.String(32), unique=True)  # a resent batch is not counted twice
    at: Mapped[datetime] = mapped_column(TS, index=True)
    key_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, index=True)
    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, index=True)
    model: Mapped[str] = mapped_column(sa.String(64))
    endpoint_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, nullable=True)
    route_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, nullable=True)
    prompt_tokens: Mapped[int] = mapped_column(sa.Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(sa.Integer, default=0)
    ttft_ms: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    duration_ms: Mapped[float] = mapped_column(sa.Float, default=0.0)
    status: Mapped[int] = mapped_column(sa.SmallInteger)
    estimated: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    cost: Mapped[float | None] = mapped_column(sa.Float, nullable=True)  # at the price in force; None: no price

    __table_args__ = (sa.Index("ix_usage_records_key_id_at", "key_id", "at"),)  # a key's spend this month


class UserKeyDefaults(Base):
    """What a user's API keys inherit when they have no value of their own (docs/gateway.md, Per-user defaults);
    set by admins. None: no default (unlimited, no budget, standard priority)."""

    __tablename__ = "user_key_defaults"
    user_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    rpm: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    tpm: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)
    max_parallel: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    budget: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    priority: Mapped[str | None] = mapped_column(sa.String(16), nullable=True)  # a PriorityClass value


class ModelPrice(Base):
    """Price of a model name in currency units per 1M input (prompt) and output (completion) tokens, set by
    superadmins (docs/gateway.md, Prices and budgets)."""

    __tablename__ = "model_prices"
    model: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    input_per_1m: Mapped[float] = mapped_column(sa.Float)
    output_per_1m: Mapped[float] = mapped_column(sa.Float)
    updated_at: Mapped[datetime] = mapped_column(TS, default=_now)
    updated_by: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, nullable=True)


class Conversation(Base):
    """A chat conversation of the console's chat page, kept per user (docs/console-api.md, "Conversations").
    ``models`` name services or custom base URLs, never a token; ``version`` counts writes, so that two appends
    at once cannot lose each other's messages (a write applies only to the version it read)."""

    __tablename__ = "conversations"
    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    owner_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(sa.String(256))
    models: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    messages: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    message_count: Mapped[int] = mapped_column(sa.Integer, default=0)
    version: Mapped[int] = mapped_column(sa.Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(TS, default=_now)
    updated_at: Mapped[datetime] = mapped_column(TS, default=_now)
    __table_args__ = (sa.Index("ix_conversations_owner_id_updated_at", "owner_id", "updated_at"),)
