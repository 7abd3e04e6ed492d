"""Manager configuration (``configs/manager.toml``; every key overridable by ``MOORAGE_MANAGER__SECTION__KEY``)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator

from common import config as common_config
from common.config import DatabaseSection, EtcdSection, StrictSection, load_config
from common.tls import check_pair, client_ssl, server_context


class ManagerSection(StrictSection):
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=8090, ge=0, le=65535)
    public_url: str | None = None  # what clients use; default http(s)://listen_host:listen_port
    storage_root: Path = Path("/var/lib/moorage/storage")  # model folders; shared with agents (NFS in a cluster)
    auto_migrate: bool = False  # run `alembic upgrade head` at start (embedded mode does)
    # HTTPS for the API listener (required in production, docs/security.md "TLS"): PEM certificate chain and its
    # private key (unencrypted, chmod 600), both or neither; checked at start. TLS 1.2 minimum.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # CA bundle (PEM) trusted for the manager's own HTTPS calls: agents' RPC and app proxies' admin ports. Default:
    # the system trust store. Not a client-certificate setting.
    tls_ca_file: str | None = None

    @model_validator(mode="after")
    def _tls(self) -> ManagerSection:
        check_pair(self.tls_cert_file, self.tls_key_file)
        return self


class AppProxySection(StrictSection):
    """Where endpoint URLs point; must match the app proxies' ``frontend``. Port mode: the manager assigns each
    endpoint a port from ``port_range`` once and every app proxy serves it there. Wildcard mode: each endpoint
    gets a subdomain (its name, made unique) served at ``<subdomain><wildcard_domain>``."""

    frontend: Literal["port", "wildcard"] = "port"
    public_host: str = "127.0.0.1"
    # "https" when the app proxies serve TLS ([proxy] tls_cert_file) or sit behind a TLS-terminating balancer:
    # endpoint URLs are built with it (the proxies cannot tell the manager).
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


class SecretsSection(common_config.SecretsSection):
    cluster_secret: SecretStr | None = None  # signs manager <-> agent calls
    cluster_secret_file: str | None = None
    jwt_secret: SecretStr | None = None  # signs endpoint tokens; shared with the app proxies only
    jwt_secret_file: str | None = None
    # encrypts keypair secret keys in the database (manager/secretbox.py); managers only, never in the database
    keypair_encryption_key: SecretStr | None = None
    keypair_encryption_key_file: str | None = None


class AuthSection(StrictSection):
    """Keypair request signing of the service API (manager/api/auth.py; docs/operations.md)."""

    # A signed request is accepted while its Date is within this many seconds of the manager's clock, and each
    # signature only once in that window. Backend.AI allows 15 minutes; clients stamp the current time and hosts
    # run NTP, so 5 minutes suffices and shortens how long a captured request stays dangerous.
    clock_skew: float = Field(default=300.0, gt=0, le=900)
    # Signatures each manager remembers (about 150 bytes each): 200,000 hold a 5-minute window at 660 requests a
    # second; past that the entries closest to expiry are dropped first (common/replay.py).
    replay_cache_entries: int = Field(default=200_000, ge=1000)


class ReconcileSection(StrictSection):
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
    # A draining route leaves the route tables at once but its replica lives this long, so requests already in
    # flight (a long generation, a stream) can finish. Kubernetes' terminationGracePeriodSeconds is 30 s; LLM
    # answers are usually shorter, and scale-down should free the GPU promptly.
    drain_grace: float = Field(default=10.0, ge=0)
    # Every route table is compared with what the store holds once per this period (heals a store that lost
    # data or was written by someone else), one sixteenth of the endpoints at a time so no tick pays for all.
    route_resync_period: float = Field(default=30.0, gt=0)


class SchedulerSection(StrictSection):
    """Placement strategy per scaling group (manager/control/scheduler.py explains each)."""

    # dispersed spreads load evenly (the safe default for inference: no host runs hot while another idles)
    default_strategy: Literal["dispersed", "concentrated", "roundrobin"] = "dispersed"
    # e.g. {gpu-a100 = "concentrated"}: bin-pack a group whose hosts must stay whole for large models
    strategies: dict[str, Literal["dispersed", "concentrated", "roundrobin"]] = Field(default_factory=dict)

    def strategy_for(self, scaling_group: str) -> str:
        return self.strategies.get(scaling_group, self.default_strategy)


class LimitsSection(StrictSection):
    max_replicas: int = Field(default=64, ge=1)  # per endpoint (Backend.AI: max_session_count_per_model_session)
    max_upload_bytes: int = Field(default=16 * 1024**3, ge=1)  # per upload request; model weights are large
    max_upload_files: int = Field(default=10_000, ge=1)
    max_json_body: int = Field(default=1024 * 1024, ge=1024)
    max_token_lifetime_seconds: int = Field(default=10 * 365 * 86400, ge=60)
    default_slots: dict[str, Any] = Field(default_factory=lambda: {"cpu": "1", "mem": "1g"})


class FilesSection(StrictSection):
    """The folder explorer's file API (manager/api/folder_files.py; docs/console-api.md)."""

    # One chunk of a chunked upload (PUT /folders/{name}/uploads/{upload_id}): a request stays short enough to
    # retry cheaply over a slow link, while 8 MiB keeps the per-request overhead negligible for model weights.
    max_chunk_bytes: int = Field(default=8 * 1024**2, ge=1024)
    # An unfinished upload's staged data is deleted after this long without a chunk (a resumed upload keeps
    # refreshing it); a day lets a browser resume after a night's sleep.
    upload_ttl: float = Field(default=86_400.0, gt=0)
    # Open chunked uploads per folder: a directory upload opens one per file, a few at a time (the console sends
    # files in turn), so 256 is far above a real client while bounding the staging area's file count.
    max_open_uploads: int = Field(default=256, ge=1)
    # Entries one directory listing reads (then sorts and pages): bounds memory and time on a huge directory; the
    # answer says "truncated" when a directory holds more.
    max_listed_entries: int = Field(default=100_000, ge=1)
    # Files saved through PUT /folders/{name}/content (the definition editor): small text files.
    max_content_bytes: int = Field(default=1024 * 1024, ge=1024)
    # Model folders the Model Store reads per request (it opens two small files in each).
    max_store_folders: int = Field(default=1000, ge=1)


class ConversationsSection(StrictSection):
    """Chat conversations kept per user (manager/conversations.py; docs/console-api.md)."""

    max_per_user: int = Field(default=1000, ge=1)
    max_messages: int = Field(default=1000, ge=1)
    # one message's content: a long model answer is a few tens of KB
    max_content_chars: int = Field(default=64 * 1024, ge=1)
    # a whole conversation as stored (its messages, parameters and models as JSON): one row stays cheap to load
    max_conversation_bytes: int = Field(default=4 * 1024**2, ge=1024)


class AutoscaleSection(StrictSection):
    """Autoscaling rules and scale from zero (manager.control.autoscale; semantics in docs/operations.md)."""

    # Rules are evaluated at most this often (scale from zero is handled on every loop tick). Their inputs refresh
    # about this fast (app proxies compute rps every scrape_interval = 5 s, agents sample kernels every 5 s), so
    # evaluating more often would only re-read the same numbers.
    evaluation_interval: float = Field(default=5.0, gt=0)
    # One call to an app proxy's admin API gives up after this long; that proxy is left out of the round (a
    # missing proxy means less observed load, never a made-up number).
    metrics_timeout: float = Field(default=2.0, gt=0)
    # A kernel's utilisation sample older than this is ignored: the agent samples every few seconds, so an old
    # sample belongs to an agent that stopped reporting.
    kernel_stats_max_age: float = Field(default=30.0, gt=0)
    # Demand (a request that found no route) this recent means "requests are waiting": it wakes an endpoint at
    # zero replicas and blocks scaling to zero. Proxies refresh it every second while they hold requests, so a
    # few seconds cover a missed write without keeping a cold endpoint awake long after the last request.
    demand_window: float = Field(default=5.0, gt=0)
    # Decisions that are blocked (cooldown, at a bound, demand) are recorded at most once per rule and reason per
    # this many seconds (changes are always recorded): the audit log explains a standstill without a row per tick.
    blocked_event_interval: float = Field(default=60.0, ge=0)


class LeaderSection(StrictSection):
    """Leader election among managers sharing one etcd: only the leader runs the control loops (docs/operations.md,
    "High availability"). A manager with the in-memory store (``moorage up``) is always the leader."""

    # etcd lease TTL in whole seconds (etcd leases are integral; LeaseKeeper needs 2+). A killed leader is replaced
    # within about this long. Shorter fails over faster, but a leader that cannot reach etcd for ttl minus the
    # margin steps down; 5 s rides out an etcd leader change (about 1 s with etcd's defaults) without flapping.
    ttl: int = Field(default=5, ge=2)
    # The leader stops its loops this long before its lease could expire in etcd, so that an in-flight tick is
    # cancelled before another manager can win (two leaders never act at once). Refreshes go out every ttl / 3.
    step_down_margin: float = Field(default=1.0, gt=0)
    # A follower forwards wake-ups (API changes, heartbeats) to the leader through etcd at once, then at most once
    # per this interval: a burst of API calls becomes a few writes per second, and a scale still acts within one.
    wake_interval: float = Field(default=0.2, gt=0)

    @model_validator(mode="after")
    def _margin(self) -> LeaderSection:
        if self.step_down_margin > self.ttl / 2:
            raise ValueError("step_down_margin must be at most ttl / 2 (refreshes go out every ttl / 3)")
        return self


class ConsoleSection(StrictSection):
    """The web console (manager/console/; docs/console.md): its own listener, serving the static pages at ``/``
    and this manager's REST API under ``/api/`` with cookie sessions instead of keypair signatures."""

    enabled: bool = True
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=8091, ge=0, le=65535)
    # The console's URL as browsers reach it (login links printed by `moorage console login-link`); default
    # http(s)://listen_host:listen_port, which is wrong behind a proxy or when listening on 0.0.0.0.
    public_url: str | None = Field(default=None, max_length=2048, pattern=r"^https?://[^\s?#]+$")
    # A console session lives this long after login (server-side expiry; the cookie carries no lifetime of its
    # own beyond it). A working day: long enough not to interrupt work, short enough that a forgotten browser
    # session dies overnight.
    session_ttl: float = Field(default=12 * 3600.0, ge=60, le=30 * 86400)
    # One-time login links (printed by `moorage up`) are valid this long: enough to copy the URL into a browser,
    # short enough that one found later in a terminal scrollback is useless.
    login_link_ttl: float = Field(default=600.0, ge=10, le=86400)
    # Failed key logins allowed per client address per minute before 429: a person mistyping never reaches it,
    # guessing a 40-character secret key is hopeless anyway, and this stops the manager being used as an oracle.
    login_failures_per_minute: int = Field(default=10, ge=1, le=10_000)
    # OpenAI-compatible APIs the chat page's custom model mode may reach through the console's relay (URL
    # prefixes: scheme, host, port and path). Empty by default: the relay runs inside the manager's network, so
    # letting any user name any URL would let them probe it (SSRF); an operator lists the APIs users may compare.
    chat_allowed_base_urls: list[str] = Field(default_factory=list, max_length=100)


class ManagerConfig(StrictSection):
    manager: ManagerSection = Field(default_factory=ManagerSection)
    db: DatabaseSection = Field(default_factory=DatabaseSection)
    etcd: EtcdSection = Field(default_factory=EtcdSection)
    appproxy: AppProxySection = Field(default_factory=AppProxySection)
    secrets: SecretsSection = Field(default_factory=SecretsSection)
    auth: AuthSection = Field(default_factory=AuthSection)
    reconcile: ReconcileSection = Field(default_factory=ReconcileSection)
    limits: LimitsSection = Field(default_factory=LimitsSection)
    scheduler: SchedulerSection = Field(default_factory=SchedulerSection)
    leader: LeaderSection = Field(default_factory=LeaderSection)
    autoscale: AutoscaleSection = Field(default_factory=AutoscaleSection)
    files: FilesSection = Field(default_factory=FilesSection)
    conversations: ConversationsSection = Field(default_factory=ConversationsSection)
    console: ConsoleSection = Field(default_factory=ConsoleSection)

    @property
    def public_url(self) -> str:
        m = self.manager
        scheme = "https" if m.tls_cert_file else "http"
        return (m.public_url or f"{scheme}://{m.listen_host}:{m.listen_port}").rstrip("/")

    def server_ssl_context(self) -> ssl.SSLContext | None:
        """The API listener's TLS context (None: plain HTTP); ConfigError for unreadable or mismatched files."""
        return server_context(self.manager.tls_cert_file, self.manager.tls_key_file, "manager")

    def client_ssl(self) -> Any:
        """``ssl=`` of the manager's HTTP client (agents, app proxy admin ports): see common.tls.client_ssl."""
        return client_ssl(self.manager.tls_ca_file, "manager.tls_ca_file")

    def cluster_secret(self) -> str:
        return self.secrets.read("cluster_secret")

    def jwt_secret(self) -> str:
        return self.secrets.read("jwt_secret")

    def keypair_encryption_key(self) -> str:
        return self.secrets.read("keypair_encryption_key")


def load_manager_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> ManagerConfig:
    return load_config(ManagerConfig, path, "MOORAGE_MANAGER", overrides)
