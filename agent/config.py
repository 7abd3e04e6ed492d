"""Agent configuration: ``agent.toml`` plus ``MOORAGE_AGENT__<SECTION>__<KEY>`` environment overrides.

Load it with :func:`load_agent_config` (a thin wrapper over :func:`common.config.load_config`). Every tunable has
a default that works for a single-host install; the comments next to them say why. Example::

    [agent]
    id = "gpu-node-1"                       # default: the hostname
    listen_host = "0.0.0.0"
    listen_port = 6001
    advertise_url = "https://10.0.0.11:6001"  # what the manager calls
    replica_host = "10.0.0.11"              # what the app proxy (and our prober) connects to
    manager_url = "https://manager.internal:8090"
    tls_ca_file = "/etc/moorage/ca.pem"     # the CA of the manager's certificate (default: system store)
    tls_cert_file = "/etc/moorage/agent.crt"  # HTTPS for the RPC listener (advertise_url then https://)
    tls_key_file = "/etc/moorage/agent.key"
    port_range = [30000, 31000]
    state_dir = "/var/lib/moorage/agent"
    storage_root = "/mnt/moorage-storage"   # the same tree the manager sees
    [secrets]
    cluster_secret_file = "/etc/moorage/cluster-secret"   # or MOORAGE_AGENT__SECRETS__CLUSTER_SECRET
    [resources]
    reserved_mem = "2g"
    [local]
    sandbox = "auto"                        # "bwrap" to refuse running unsandboxed
    [docker]                                # with [agent] runtime = "docker"
    socket = "unix:///var/run/docker.sock"
    [gpu]
    fake_devices = [{uuid = "GPU-fake-0", name = "Fake A100", memory = "40g"}]   # tests only
    [etcd]                                  # optional: registration under a lease
    host = "10.0.0.2"
    port = 2379
    namespace = "/prod"
    user = "moorage"                        # etcd authentication (common.config.EtcdSection)
    password_file = "/etc/moorage/etcd_password"
"""

from __future__ import annotations

import os
import posixpath
import socket
import ssl
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import Field, SecretStr, field_validator, model_validator

from common import config as common_config
from common.config import EtcdSection as CommonEtcdSection
from common.config import StrictSection, load_config
from common.slots import parse_binary_size
from common.tls import check_pair, client_ssl, server_context

ENV_PREFIX = "MOORAGE_AGENT"
_AGENT_ID_PATTERN = r"^[A-Za-z0-9._:-]+$"  # = common.protocol.AgentInfo.agent_id
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})


def _default_agent_id() -> str:
    name = socket.gethostname() or "agent"
    cleaned = "".join(ch if (ch.isalnum() or ch in "._:-") else "-" for ch in name)
    return cleaned[:128] or "agent"


def _check_work_mount(value: str) -> str:
    norm = posixpath.normpath(value)
    if not value.startswith("/") or norm in ("/", "/tmp", "/proc", "/dev", "/opt/moorage", "/models"):
        raise ValueError("must be an absolute path other than /, /tmp, /proc, /dev, /opt/moorage, /models")
    return norm


_Section = StrictSection  # unknown keys are errors (common/config.py)


class AgentSection(_Section):
    id: str = Field(default_factory=_default_agent_id, min_length=1, max_length=128, pattern=_AGENT_ID_PATTERN)
    listen_host: str = "127.0.0.1"  # the RPC API is cluster-internal; expose it explicitly in a cluster
    listen_port: int = Field(default=6001, ge=0, le=65535)  # Backend.AI's agent RPC port
    advertise_url: str | None = None  # default: http://{listen_host}:{listen_port} (replica_host if wildcard)
    replica_host: str = "127.0.0.1"  # the address the app proxy (and our prober) uses to reach replicas
    scaling_group: str = "default"
    runtime: Literal["local", "docker"] = "local"  # see agent.runtime.local / agent.runtime.docker
    # Host ports handed to replicas (Backend.AI's container.port-range default).
    port_range: tuple[int, int] = (30000, 31000)
    state_dir: Path = Field(default_factory=lambda: platformdirs.user_state_path("moorage") / "agent")
    storage_root: Path = Field(default_factory=lambda: platformdirs.user_data_path("moorage") / "storage")
    # 3 s keeps the manager's view fresh (transitions are sent at once anyway) at a negligible cost.
    heartbeat_interval: float = Field(default=3.0, gt=0, le=300)
    # Each live replica's CPU and memory use is sampled this often and sent with the heartbeats (input of
    # `kernel` autoscaling rules). One /proc scan for all local replicas, one stats call per container; 5 s is
    # the scale autoscaling acts on. 0 disables sampling.
    stats_interval: float = Field(default=5.0, ge=0, le=300)
    manager_url: str | None = None  # None: no heartbeats (RPC only)
    # HTTPS for the RPC listener (the manager's calls; advertise_url then defaults to https://): PEM certificate
    # chain and its private key (unencrypted, chmod 600), both or neither. Required in production unless the
    # RPC port is on a private network only (docs/security.md, "TLS").
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # CA bundle (PEM) trusted for the https:// manager_url (heartbeats). Default: the system trust store.
    tls_ca_file: str | None = None
    # Failed/exited/terminated kernels stay in the list this long so the manager sees the final state.
    terminal_retention: float = Field(default=600.0, ge=0)
    # SIGTERM → SIGKILL grace when a replica is stopped; inference servers flush and exit well within it.
    stop_grace: float = Field(default=5.0, ge=0, le=600)
    # Definitions without a health_check: the replica is healthy once its port accepts TCP connections; it
    # must do so within startup_timeout (the runtime-variant default initial_delay) and is then re-checked
    # every tcp_probe_interval; tcp_probe_retries + 1 consecutive failures make it unhealthy.
    startup_timeout: float = Field(default=1800.0, gt=0)
    tcp_probe_interval: float = Field(default=10.0, gt=0)
    tcp_probe_retries: int = Field(default=2, ge=0)
    # How often the supervisor checks replica processes (exit detection latency) and health deadlines.
    monitor_interval: float = Field(default=0.25, gt=0, le=10)
    max_log_bytes: int = Field(default=8 * 1024 * 1024, ge=4096)  # per stream; copytruncate beyond it

    @field_validator("port_range")
    @classmethod
    def _range(cls, value: tuple[int, int]) -> tuple[int, int]:
        low, high = value
        if not 1024 < low <= high <= 65535:
            raise ValueError("must be [low, high] with 1024 < low <= high <= 65535")
        return value

    @field_validator("manager_url", "advertise_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _tls(self) -> AgentSection:
        check_pair(self.tls_cert_file, self.tls_key_file)
        return self

    @property
    def rpc_url(self) -> str:
        if self.advertise_url:
            return self.advertise_url
        host = self.replica_host if self.listen_host in _WILDCARD_HOSTS else self.listen_host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        scheme = "https" if self.tls_cert_file else "http"
        return f"{scheme}://{host}:{self.listen_port}"


class ReplicaUidSection(_Section):
    """Host uids for replicas (local sandbox when the agent is root; Docker with ``run_as = "replica"``): each
    live replica runs as its own uid (= gid) from ``base .. base + count - 1``, far above ordinary users and
    the usual subordinate-uid ranges, so a replica owns nothing else on the host."""

    base: int = Field(default=3_000_000, ge=100_000, le=4_000_000_000)
    count: int = Field(default=10_000, ge=1, le=1_000_000)


class SecretsSection(common_config.SecretsSection):
    cluster_secret: SecretStr | None = None  # prefer the environment or a file; never commit it
    cluster_secret_file: str | None = None


class ResourcesSection(_Section):
    # The agent itself is light and the local runtime does not pin CPUs, so no core is held back by default.
    reserved_cpu: float = Field(default=0.0, ge=0)
    reserved_mem: str = "1g"  # headroom for the OS and the agent (Backend.AI's default reserve)
    cpu: float | None = Field(default=None, gt=0)  # override discovery (e.g. to share a host)
    mem: str | None = None  # binary size, e.g. "16g"

    @field_validator("reserved_mem", "mem")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is not None:
            parse_binary_size(value)
        return value


class LocalSection(_Section):
    """The ``local`` runtime: a subprocess in a bubblewrap sandbox (docs/security.md)."""

    # bwrap: the agent refuses to start when the sandbox does not work here. "auto" is the old name of the
    # same thing (it no longer falls back). "none" runs replicas unsandboxed: only on purpose, and reported.
    sandbox: Literal["auto", "bwrap", "none"] = "bwrap"
    bwrap_path: str = "bwrap"
    # isolated: each replica has a network namespace of its own, its port forwarded by pasta; host: replicas
    # share the host's network (and reach every service on it): only where pasta cannot run.
    network: Literal["isolated", "host"] = "isolated"
    pasta_path: str = "pasta"
    # Extra host directories replicas may read (e.g. a CUDA toolkit under /opt); nothing else is visible.
    readonly_paths: list[str] = Field(default_factory=list)
    # Prepended to PATH in replicas, so `python3` there is the interpreter that has the serving packages.
    extra_path: list[str] = Field(default_factory=lambda: [os.path.dirname(sys.executable)])
    python: str = Field(default_factory=lambda: sys.executable)  # runs the launcher (stdlib only)
    # Where the private writable work dir appears inside the sandbox (also HOME). Not /work: hosts (and CI
    # checkouts) often keep code under /work, which the mount would hide; /home/work is Backend.AI's path.
    work_mount: str = "/home/work"

    @field_validator("work_mount")
    @classmethod
    def _abs(cls, value: str) -> str:
        return _check_work_mount(value)


class DockerSection(_Section):
    """The ``docker`` runtime (aiodocker). Each container has a network namespace of its own (``none``) whose
    port pasta forwards from the host, like the local sandbox (docs/security.md)."""

    network: Literal["isolated", "host"] = "isolated"  # host: the old --network host (reaches the whole host)
    pasta_path: str = "pasta"
    # replica: the container runs as the replica's own unprivileged uid with no capabilities; image: as the
    # image's USER (for images that must be root), minus the dangerous capabilities.
    run_as: Literal["replica", "image"] = "replica"
    read_only_root: bool = True  # the image's file system read-only; /tmp a private tmpfs; work dir writable
    pids_limit: int = Field(default=4096, ge=64)  # a fork bomb stays inside its container

    socket: str = "unix:///var/run/docker.sock"  # or tcp://host:2375
    python: str = "python3"  # the image's interpreter that runs the launcher (stdlib only)
    work_mount: str = "/home/work"  # the private writable work dir inside the container (also HOME)
    init: bool = True  # docker-init as PID 1: forwards SIGTERM to the replica and reaps zombies
    gpu_driver: str = "nvidia"  # DeviceRequests driver for cuda.* allocations
    pull: Literal["missing", "never"] = "missing"  # pull the image when it is not present locally
    pull_timeout: float = Field(default=1800.0, gt=0)
    extra_env: dict[str, str] = Field(default_factory=dict)  # added to every replica (e.g. proxies)
    shm_size: str = "1g"  # /dev/shm (PyTorch dataloaders, NCCL); Docker's 64m default is too small

    @field_validator("shm_size")
    @classmethod
    def _shm(cls, value: str) -> str:
        parse_binary_size(value)
        return value

    @field_validator("work_mount")
    @classmethod
    def _abs(cls, value: str) -> str:
        return _check_work_mount(value)

    @field_validator("socket")
    @classmethod
    def _socket(cls, value: str) -> str:
        if not value.startswith(("unix://", "tcp://", "http://", "https://")):
            raise ValueError("must be unix:///path/to/docker.sock or tcp://host:port")
        return value


class FakeGpu(_Section):
    uuid: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    name: str = "Fake GPU"
    memory: str = "16g"  # binary size

    @field_validator("memory")
    @classmethod
    def _size(cls, value: str) -> str:
        parse_binary_size(value)
        return value


class GpuSection(_Section):
    """GPU discovery: NVML (nvidia-ml-py) unless ``fake_devices`` is set (tests, demos without GPUs)."""

    enabled: bool = True  # false: report no GPU slots even when NVML finds devices
    fake_devices: list[FakeGpu] | None = None
    # cuda.shares requests larger than what one device has free may be split over several devices
    # (Backend.AI's allow_fractional_resource_fragmentation); false keeps each share request minimal.
    allow_fragmentation: bool = False
    # Devices the agent must not hand out (by UUID), e.g. one reserved for the display.
    exclude: list[str] = Field(default_factory=list)


class EtcdSection(CommonEtcdSection):
    """Registration in etcd under a lease (``/moorage/agents/<id>``). No host: no registration. The other keys
    (port, namespace, user, password, password_file) are the manager's and app proxy's."""

    host: str | None = None  # type: ignore[assignment]  # optional for the agent alone (no host: no registration)
    lease_ttl: int = Field(default=10, ge=2, le=600)  # seconds; the key vanishes this long after the agent dies


class AgentConfig(_Section):
    agent: AgentSection = Field(default_factory=AgentSection)
    secrets: SecretsSection = Field(default_factory=SecretsSection)
    resources: ResourcesSection = Field(default_factory=ResourcesSection)
    local: LocalSection = Field(default_factory=LocalSection)
    docker: DockerSection = Field(default_factory=DockerSection)
    replica_uids: ReplicaUidSection = Field(default_factory=ReplicaUidSection)
    gpu: GpuSection = Field(default_factory=GpuSection)
    etcd: EtcdSection = Field(default_factory=EtcdSection)

    @model_validator(mode="after")
    def _paths(self) -> AgentConfig:
        self.agent.state_dir = Path(os.path.abspath(os.path.expanduser(self.agent.state_dir)))
        self.agent.storage_root = Path(os.path.abspath(os.path.expanduser(self.agent.storage_root)))
        return self

    def server_ssl_context(self) -> ssl.SSLContext | None:
        """The RPC listener's TLS context (None: plain HTTP); ConfigError for unreadable or mismatched files."""
        return server_context(self.agent.tls_cert_file, self.agent.tls_key_file, "agent")

    def client_ssl(self) -> Any:
        """``ssl=`` of the heartbeat client (common.tls.client_ssl)."""
        return client_ssl(self.agent.tls_ca_file, "agent.tls_ca_file")

    def cluster_secret(self) -> str:
        """The manager ↔ agent HMAC secret (file wins over inline); raises ConfigError when missing."""
        return self.secrets.read("cluster_secret")


def load_agent_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> AgentConfig:
    """Read ``path`` (TOML, optional), apply ``MOORAGE_AGENT__*`` env overrides, then ``overrides``."""
    return load_config(AgentConfig, path, ENV_PREFIX, overrides=overrides, environ=environ)
