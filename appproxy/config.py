"""App proxy configuration: ``load_config(ProxyConfig, path, "MOORAGE_APPPROXY")``.

Every key can be overridden by ``MOORAGE_APPPROXY__<SECTION>__<KEY>`` (see :mod:`common.config`), e.g.
``MOORAGE_APPPROXY__PROXY__MAX_BODY_SIZE=1048576`` or ``MOORAGE_APPPROXY__SECRETS__JWT_SECRET_FILE=/run/secret``.
Unknown keys are refused, so a misspelt limit fails loudly instead of silently keeping its default.

Example ``appproxy.toml``::

    [proxy]
    bind_host = "0.0.0.0"
    max_body_size = 33554432          # 32 MiB
    max_concurrency_per_endpoint = 256

    [outlier]
    consecutive_failures = 3

    [etcd]
    host = "127.0.0.1"
    port = 2379
    user = "moorage"                               # etcd authentication (common.config.EtcdSection)
    password_file = "/etc/moorage/etcd_password"

    [secrets]
    jwt_secret_file = "/etc/moorage/jwt_secret"   # shared with the manager; never commit the secret itself
    cluster_secret_file = "/etc/moorage/cluster_secret"   # signs the manager's calls to the admin port

Slow, greedy and large requests (defaults shown; each bound is explained beside its field)::

    [proxy]
    request_head_timeout = 15.0           # a request head must arrive within this (slowloris)
    keepalive_timeout = 75.0              # idle keep-alive; keep it above the idle timeout of a load balancer in front
    max_connections_per_client = 256      # per client address; 0 behind a load balancer that is the only client
    retry_buffer_size = 1048576           # bodies up to 1 MiB are buffered (retryable), larger ones streamed
    max_buffered_body_bytes = 268435456   # all request bodies held by the process → 503 + Retry-After beyond
    request_body_timeout = 60.0           # a body that stops arriving → 408

HTTPS on every listener (endpoints and admin port; the manager's ``[appproxy] scheme = "https"`` goes with it)::

    [proxy]
    tls_cert_file = "/etc/moorage/proxy.crt"   # for the public host name, or "*.apps.example.com" in wildcard mode
    tls_key_file = "/etc/moorage/proxy.key"    # unencrypted PEM, chmod 600

Wildcard mode and the admin listener::

    [proxy]
    frontend = "wildcard"
    wildcard_domain = ".apps.example.com"   # endpoint with subdomain "chat" → http(s)://chat.apps.example.com
    wildcard_port = 8080
    admin_host = "10.0.0.5"                 # a private address: /metrics is unauthenticated
    admin_port = 9180
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator

from common import config as common_config
from common.config import EtcdSection, StrictSection, load_config
from common.tls import check_pair, server_context

KiB = 1024
MiB = 1024 * KiB


_Section = StrictSection  # unknown keys are errors (common/config.py)


class ProxySection(_Section):
    # Address the per-endpoint ports (or the wildcard port) listen on. Loopback by default: exposing the proxy
    # is a deliberate choice.
    bind_host: str = "127.0.0.1"

    # --- frontend: how a request finds its endpoint (both give a URL that never changes for its life) ---
    # "port": one listening port per endpoint (the table's ``port``), the Host header plays no part.
    # "wildcard": one listener on ``wildcard_port``; the endpoint is the one whose ``subdomain`` +
    # ``wildcard_domain`` equals the Host header (case-insensitive, port ignored); anything else → 404.
    frontend: Literal["port", "wildcard"] = "port"
    wildcard_domain: str = Field("", max_length=253)  # e.g. ".apps.example.com" (leading dot required)
    wildcard_port: int = Field(8080, ge=0, le=65535)

    # --- TLS: HTTPS on every listener of this proxy (the endpoints' ports or the wildcard port, and the admin
    # port). PEM certificate chain and its private key (unencrypted, chmod 600), both or neither; checked at start.
    # Wildcard mode needs a certificate for "*<wildcard_domain>"; port mode one for the public host name. Set the
    # manager's [appproxy] scheme = "https" so that the endpoint URLs it hands out say so. Required in production
    # unless a TLS-terminating balancer is in front (docs/security.md, "TLS").
    tls_cert_file: str | None = None
    tls_key_file: str | None = None

    # --- admin listener: Prometheus /metrics (open) and the manager's JSON API (signed requests) ---
    # Bind it to a private address: /metrics is served without authentication. None: no admin listener.
    admin_host: str = "127.0.0.1"
    admin_port: int | None = Field(None, ge=0, le=65535)
    # Replica metrics scraping (the JSON API's source): every healthy route's ``scrape_path`` is fetched every
    # ``scrape_interval`` seconds, giving up after ``scrape_timeout`` or beyond ``scrape_max_bytes``.
    scrape_interval: float = Field(5.0, gt=0)
    scrape_timeout: float = Field(2.0, gt=0)
    scrape_max_bytes: int = Field(1 * MiB, ge=1 * KiB, le=64 * MiB)
    scrape_path: str = Field("/metrics", pattern=r"^/")
    # At most this many distinct sample names are kept per replica (a runaway exporter cannot blow up memory).
    scrape_max_series: int = Field(2000, ge=1)

    # One log line per request (aiohttp's access log, logger "aiohttp.access"). Costs ~10 % of throughput.
    access_log: bool = False

    # --- processes ---
    # Number of worker processes sharing the ports (SO_REUSEPORT); ``--workers`` on the command line wins.
    # With N > 1, worker k serves its admin listener on ``admin_port + k``.
    workers: int = Field(1, ge=1, le=64)

    # --- limits (each with the status a client gets when it is exceeded) ---
    # Total size of the request headers → 431. Also the cap on one header line given to aiohttp's parser, which
    # answers 400 for a single over-long line before our handler runs (vLLM CVE-2025-48956: unbounded headers).
    max_header_size: int = Field(16 * KiB, ge=1 * KiB, le=1 * MiB)
    # Number of request header lines (aiohttp's default) → 400 from the parser; bounds parsing work per request.
    max_header_count: int = Field(128, ge=8, le=1024)
    # Longest request line (method + target + version) → 400 from the parser; long query strings are not
    # an inference use case.
    max_request_line: int = Field(8 * KiB, ge=1 * KiB, le=1 * MiB)
    # Request body → 413 (announced: before reading it; chunked: as soon as it is over, mid-stream).
    max_body_size: int = Field(32 * MiB, ge=0, le=4096 * MiB)
    # Bodies up to this size are read whole before forwarding, so the request can be retried on another replica
    # before the first byte; larger ones are streamed to the replica as they arrive (back-pressure both ways) and
    # are not retried once a byte of them has gone (appproxy.body). Inference requests are JSON of kilobytes; a
    # 1 MiB buffer keeps nearly all of them retryable while an upload of many MiB never sits whole in memory.
    retry_buffer_size: int = Field(1 * MiB, ge=64 * KiB, le=64 * MiB)
    # Process-wide cap on request body bytes held in memory: buffered bodies plus a fixed 256 KiB window per
    # streamed one → 503 + Retry-After beyond it, before the body is read. Before, buffering was bounded only per
    # endpoint (32 MiB × 256), in the manager's own process in embedded mode. 256 MiB is 256 buffered bodies at
    # the largest retry_buffer_size, or a thousand concurrent uploads.
    max_buffered_body_bytes: int = Field(256 * MiB, ge=256 * KiB, le=16384 * MiB)
    # A request body that stops arriving for this many seconds → 408 and the connection closed (a client that
    # announces a body and dribbles it, or sends nothing, no longer holds a replica connection for ever).
    request_body_timeout: float = Field(60.0, gt=0, le=3600)
    # Requests in flight per endpoint → 503 with Retry-After; sheds load instead of queueing without bound.
    max_concurrency_per_endpoint: int = Field(256, ge=1)
    # --- client connections (slow or greedy clients) ---
    # A request head (request line and headers) must arrive in full within this many seconds, counted from the
    # connection's accept or from the first byte of the next request on a kept-alive connection; else the
    # connection is closed. Without it a client that never finishes its head (slowloris) held a connection for
    # an hour. A real client sends its head in one go; 15 s leaves room for a slow mobile link.
    request_head_timeout: float = Field(15.0, gt=0, le=300)
    # An idle keep-alive connection (between requests) is closed after this many seconds. Above the idle timeout
    # of the usual load balancers in front (AWS ALB: 60 s) so that they, not we, close it first; raise it above
    # yours if it is longer. (It was aiohttp's 3630 s: an idle connection cost a socket for an hour.)
    keepalive_timeout: float = Field(75.0, gt=0, le=3600)
    # Connections open at once from one client address (per worker process); more → 429 and closed at once.
    # Generous for browsers and SDK pools (a few to tens each); bounds the sockets and buffers one address can
    # pin. Behind a load balancer every connection comes from its address: raise it, or 0 for no cap.
    max_connections_per_client: int = Field(256, ge=0)

    # Seconds announced in Retry-After on every 503 (overload, no route available).
    retry_after: int = Field(2, ge=1, le=3600)

    # --- CORS (the origins themselves are per endpoint: the route table's cors_allowed_origins) ---
    # Access-Control-Max-Age of an allowed pre-flight: how long a browser may reuse it. 10 minutes keeps a page's
    # pre-flights rare; browsers cap it anyway (Chromium at 2 hours).
    cors_max_age: int = Field(600, ge=0, le=86400)

    # --- scale from zero: requests for an endpoint whose route table has no routes are held, not refused ---
    # The proxy signals demand (DEMAND_PREFIX key; the manager scales an endpoint at zero back up) and holds the
    # request until a route appears, for at most this many seconds (→ 503 + Retry-After after that). Loading a
    # model takes tens of seconds to minutes; past two minutes a client is better told to come back. 0: never
    # hold (an endpoint without routes answers 503 at once, as before scale from zero).
    hold_timeout: float = Field(120.0, ge=0, le=3600)
    # Requests held at once per endpoint; more → 503 + Retry-After at once. Bounds the sockets and memory a burst
    # against a cold endpoint can pin (bodies are not read while held).
    hold_max_requests: int = Field(256, ge=0)
    # Demand is written at most this often per endpoint (while requests are held it is refreshed at this pace):
    # bounds the store writes of a burst to one per second per endpoint and proxy.
    demand_debounce: float = Field(1.0, gt=0, le=60)

    # --- registration (the manager finds the admin API of each proxy worker under PROXIES_PREFIX) ---
    # This proxy's name in the registration key (worker k adds "-w<k>"); default: "<hostname>-<admin port>".
    proxy_id: str | None = Field(None, max_length=100, pattern=r"^[A-Za-z0-9._:-]+$")
    # Host the manager uses to reach the admin listener; default admin_host (set it when admin_host is 0.0.0.0).
    admin_advertise_host: str | None = Field(None, max_length=253)
    # TTL (seconds) of the registration's etcd lease: a proxy that dies is forgotten within this long.
    registration_ttl: int = Field(10, ge=2, le=300)

    # --- upstream (replica) connections ---
    # TCP connect to a replica → retried on another route (it is before the first byte), then 502.
    upstream_connect_timeout: float = Field(5.0, gt=0)
    # Idle time between two reads from the replica (aiohttp sock_read), NOT a total deadline: a long generation
    # that keeps producing bytes is never cut. Waiting longer than this for the response
    # headers → 504; going silent mid-stream → the client's connection is aborted.
    upstream_read_timeout: float = Field(300.0, gt=0)
    # How long an idle pooled connection to a replica is kept. Below uvicorn's 5 s default (vLLM, TGI, SGLang)
    # so we do not reuse a connection the replica is about to close.
    upstream_keepalive_timeout: float = Field(4.0, ge=0)
    # Distinct routes tried for one request while no byte has been sent to the client (connect refused/reset or
    # connect timeout); 1 disables retries.
    max_attempts: int = Field(3, ge=1, le=16)
    # Trust incoming X-Forwarded-For/-Proto/-Host (append to the chain) — only behind a trusted load balancer.
    # Off: those headers (and Forwarded, X-Real-IP) are dropped and replaced by what this proxy saw.
    trust_forwarded_headers: bool = False

    # --- lifecycle ---
    # A port that could not be bound (in use, permission) is tried again after this many seconds.
    bind_retry_interval: float = Field(2.0, gt=0)
    # start() waits this long for the first route table snapshot; with etcd down it starts empty and converges.
    initial_sync_timeout: float = Field(5.0, ge=0)
    # On stop, in-flight requests (long streams) get this long to finish before their connections are closed.
    shutdown_timeout: float = Field(10.0, ge=0)

    @model_validator(mode="after")
    def _check_tls(self) -> ProxySection:
        check_pair(self.tls_cert_file, self.tls_key_file)
        return self

    @model_validator(mode="after")
    def _check_body_limits(self) -> ProxySection:
        if self.retry_buffer_size > self.max_buffered_body_bytes:
            raise ValueError("retry_buffer_size must not exceed max_buffered_body_bytes")
        return self

    @model_validator(mode="after")
    def _check_frontend(self) -> ProxySection:
        if self.frontend == "wildcard":
            domain = self.wildcard_domain
            if not domain.startswith(".") or len(domain) < 2 or any(c in domain for c in " /:@"):
                raise ValueError('wildcard_domain must look like ".apps.example.com" when frontend = "wildcard"')
        return self


class OutlierSection(_Section):
    """Passive health (docs/architecture.md, Passive health), Envoy-style outlier ejection + panic threshold."""

    # Consecutive connection failures / 5xx before a route is ejected (Backend.AI worker and LiteLLM use 3).
    consecutive_failures: int = Field(3, ge=1)
    # First ejection lasts this long; each further ejection doubles it ...
    base_ejection: float = Field(5.0, gt=0)
    # ... up to this cap. A route that stays in for this long after its last ejection starts over at the base.
    max_ejection: float = Field(60.0, gt=0)
    # When fewer than this fraction of the routes are available, balance over all of them (Envoy's 50 %):
    # a false ejection of most replicas must not turn into a full outage.
    panic_threshold: float = Field(0.5, ge=0, le=1)


class GatewaySection(_Section):
    """The OpenAI-compatible gateway listener (docs/gateway.md): one port, models by name, API keys, limits."""

    # None: no gateway listener. ``moorage up`` sets one (its URL is printed at start).
    port: int | None = Field(None, ge=0, le=65535)
    host: str = "127.0.0.1"  # loopback by default, like the endpoint ports: exposing it is a deliberate choice
    # A request body over this → 400 naming the body. Chat requests with long contexts are a few hundred KiB;
    # 8 MiB leaves room for base64 images while bounding what one request holds in memory.
    max_body_size: int = Field(8 * MiB, ge=64 * KiB, le=256 * MiB)
    # Bounds on what a request may ask for (→ 400 naming the field): no deployed model generates more than
    # max_tokens_limit in one answer, and n copies multiply the replica's work.
    max_tokens_limit: int = Field(1_000_000, ge=1)
    max_n: int = Field(16, ge=1, le=1024)
    # Requests the gateway serves at once (all keys, this process) → 503 + Retry-After beyond.
    max_concurrency: int = Field(4096, ge=1)
    # A body that stops arriving for this long → 408.
    request_body_timeout: float = Field(60.0, gt=0, le=3600)

    # --- rate limits (per key: requests and tokens per minute, counted apart) ---
    # Where the counters live: None → in this process (one proxy, `moorage up`); "redis://host:6379/0" → shared
    # by every proxy process and host (cluster mode). One Redis round trip per request to admit it (plus one
    # to correct the token count when it ends).
    redis_url: str | None = Field(None, max_length=512, pattern=r"^rediss?://")
    # Prefix of every Redis key this gateway writes (several clusters, or tests, can share one Redis).
    redis_key_prefix: str = Field("moorage:rl:", max_length=64)
    # A Redis call that takes longer than this counts as Redis being unreachable: no request ever waits on it.
    redis_timeout: float = Field(0.25, gt=0, le=10)
    # Redis unreachable (or slow): admit the request without counting it (true: availability first) or refuse
    # it with 503 (false: limits first). Either way a warning is logged and gateway_ratelimit_errors_total counts.
    fail_open: bool = True
    # The tokens a request reserves besides its prompt when it does not say max_tokens (corrected to the real
    # usage when the answer ends). 1024 covers a typical chat answer without holding a TPM budget hostage.
    default_max_tokens: int = Field(1024, ge=1)

    # --- priority queue (docs/gateway.md, Priority queue): per model pool, in this process ---
    # Gateway requests one route serves at once when its service sets no route_capacity. 8 keeps a
    # continuous-batching engine (vLLM, llama.cpp with --parallel) busy without letting a burst pile up inside one
    # replica, where it cannot be ordered by priority; a service whose engine has more slots says so.
    default_route_capacity: int = Field(8, ge=1, le=100_000)
    # Requests that may wait per model pool; more → 503 queue_full at once (every waiter holds its body).
    queue_max_length: int = Field(1000, ge=0, le=1_000_000)
    # A request that waited this long for a slot → 503 queue_timeout + Retry-After.
    queue_timeout: float = Field(30.0, gt=0, le=3600)

    # --- usage metering: one record per request, sent to the manager in batches ---
    # The manager's base URL for POST /internal/usage (signed with secrets.cluster_secret). None: no usage is
    # recorded (a warning at start); `moorage up` hands records to its manager directly.
    manager_url: str | None = Field(None, max_length=512, pattern=r"^https?://")
    # Records are sent this often (and whenever a full batch of 1000 waits): what a SIGKILL can lose.
    usage_flush_interval: float = Field(1.0, gt=0, le=60)
    # Records kept while the manager cannot be reached; the oldest are dropped (and counted) beyond this.
    usage_buffer_limit: int = Field(100_000, ge=1000)
    # On stop (SIGTERM) the last records get this long to reach the manager.
    usage_close_timeout: float = Field(5.0, gt=0, le=120)


class SecretsSection(common_config.SecretsSection):
    # HS256 key shared with the manager, which mints the endpoint tokens. Inline (environment) or a file;
    # the file wins (common.config.SecretsSection).
    jwt_secret: SecretStr | None = None
    jwt_secret_file: str | None = None
    # HMAC secret of the internal channels (common.signing); needed when the admin listener is on.
    cluster_secret: SecretStr | None = None
    cluster_secret_file: str | None = None


class ProxyConfig(_Section):
    proxy: ProxySection = Field(default_factory=ProxySection)
    outlier: OutlierSection = Field(default_factory=OutlierSection)
    etcd: EtcdSection = Field(default_factory=EtcdSection)
    secrets: SecretsSection = Field(default_factory=SecretsSection)
    gateway: GatewaySection = Field(default_factory=GatewaySection)

    def jwt_secret(self) -> str:
        """The token signing secret; raises :class:`common.config.ConfigError` when unset or too short."""
        return self.secrets.read("jwt_secret")

    def server_ssl_context(self) -> ssl.SSLContext | None:
        """The listeners' TLS context (None: plain HTTP); ConfigError for unreadable or mismatched files."""
        return server_context(self.proxy.tls_cert_file, self.proxy.tls_key_file, "proxy")

    def cluster_secret(self) -> str | None:
        """The internal request signing secret; None when neither the admin listener nor usage reporting to the
        manager is on (then it is not needed)."""
        if self.proxy.admin_port is None and self.gateway.manager_url is None:
            return None
        return self.secrets.read("cluster_secret",
                                 "secrets.cluster_secret (admin_port or gateway.manager_url is set)")


ENV_PREFIX = "MOORAGE_APPPROXY"


def load_proxy_config(path: str | Path | None) -> ProxyConfig:
    """The TOML file (if any) with ``MOORAGE_APPPROXY__*`` environment overrides applied."""
    return load_config(ProxyConfig, path, ENV_PREFIX)
