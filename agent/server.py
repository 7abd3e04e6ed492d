"""The agent's aiohttp application: the signed RPC API of :mod:`common.protocol` plus the background work.

``build_agent_app(config)`` returns an app whose ``cleanup_ctx`` starts and stops everything (kernel
registry, probers, heartbeat loop). It holds no global state and installs no signal handlers, so the
manager's ``moorage up`` can run it on its own event loop with an ``AppRunner``; ``app[AGENT_KEY]`` is the
:class:`Agent` (e.g. ``await app[AGENT_KEY].registry.destroy_all()`` before an embedded shutdown).
Stopping the app leaves replicas running (see :meth:`agent.kernels.KernelRegistry.close`).
"""

from __future__ import annotations

import asyncio
import logging
import platform
import uuid
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from pydantic import ValidationError

from agent import __version__
from agent.config import AgentConfig
from agent.gpu import discover_gpus
from agent.heartbeat import HeartbeatLoop
from agent.kernels import MAX_LOG_TAIL_LINES, KernelRegistry
from agent.resources import available_slots
from agent.runtime import KernelRuntime, make_runtime
from agent.stats import StatsCollector
from common.errors import InvalidAPIParameters, invalid_params_from_validation, problem_middleware
from common.lease import LeaseKeeper
from common.protocol import UNSANDBOXED_RUNTIME, AgentHeartbeat, AgentInfo, KernelSpec
from common.signing import SignedClient, read_signed_json, signed_request_middleware
from common.store import AGENTS_PREFIX, EtcdStore

log = logging.getLogger(__name__)

DEFAULT_LOG_TAIL = 200


class Agent:
    """One agent: its registry, runtime and heartbeat loop; started and stopped by the app's cleanup_ctx."""

    def __init__(self, config: AgentConfig, secret: str, runtime: KernelRuntime | None = None):
        self.config = config
        self._secret = secret
        self.runtime = runtime or make_runtime(config)
        self.gpus = discover_gpus(config.gpu)
        self.registry = KernelRegistry(config, self.runtime, gpus=self.gpus)
        self.slots = available_slots(config.resources, self.gpus)
        self.heartbeat: HeartbeatLoop | None = None
        self.lease: LeaseKeeper | None = None
        self._session: aiohttp.ClientSession | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._lease_task: asyncio.Task[None] | None = None
        self.stats = StatsCollector(self.registry, self.runtime, config.agent.stats_interval)
        self._stats_task: asyncio.Task[None] | None = None

    def registration_key(self) -> str:
        return AGENTS_PREFIX + self.config.agent.id

    async def _register(self, store: EtcdStore, lease_id: int) -> None:
        await store.put_with_lease(self.registration_key(), self.info().model_dump_json(), lease_id)
        log.info("agent %s: registered in etcd at %s (lease %x)", self.config.agent.id, self.registration_key(),
                 lease_id)

    def _start_registration(self) -> None:
        etcd = self.config.etcd
        if not etcd.host:
            log.info("agent %s: [etcd] host is not set; not registering in etcd", self.config.agent.id)
            return
        self.lease = LeaseKeeper(EtcdStore.from_config(etcd).clone, etcd.lease_ttl,
                                 self._register, name=f"agent {self.config.agent.id} registration")
        self._lease_task = asyncio.create_task(self.lease.run(), name="agent-etcd-registration")

    def info(self) -> AgentInfo:
        """What the agent heartbeats and registers. GPU details (uuid, name, memory, usage) are in
        ``GET /rpc/health`` under ``gpus`` (AgentInfo itself has only the slot totals)."""
        agent = self.config.agent
        return AgentInfo(
            agent_id=agent.id, rpc_url=agent.rpc_url, replica_host=agent.replica_host,
            scaling_group=agent.scaling_group, architecture=platform.machine() or "x86_64",
            runtime=UNSANDBOXED_RUNTIME if getattr(self.runtime, "unsandboxed", False) else agent.runtime,
            available_slots=dict(self.slots), version=__version__,
            devices=[g.uuid for g in self.gpus],
        )

    def heartbeat_payload(self) -> AgentHeartbeat:
        return AgentHeartbeat(**self.info().model_dump(), kernels=self.registry.list_reports())

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        await self.registry.start()
        log.info("agent %s: runtime %s, slots %s, rpc %s", self.config.agent.id, self.runtime.describe(),
                 self.slots, self.config.agent.rpc_url)
        if self.config.agent.manager_url:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.config.client_ssl()))
            self.heartbeat = HeartbeatLoop(
                SignedClient(self._session, self._secret), self.config.agent.manager_url,
                self.heartbeat_payload, self.registry.destroy_kernel, self.config.agent.heartbeat_interval)
            self.registry.set_on_change(self.heartbeat.wake)
            self._heartbeat_task = asyncio.create_task(self.heartbeat.run(), name="agent-heartbeat")
        else:
            log.warning("agent %s: [agent] manager_url is not set; no heartbeats", self.config.agent.id)
        self._start_registration()
        self._stats_task = asyncio.create_task(self.stats.run(), name="agent-replica-stats")
        try:
            yield
        finally:
            self._stats_task.cancel()
            await asyncio.gather(self._stats_task, return_exceptions=True)
            if self.lease is not None:
                await self.lease.close(revoke=True)  # a clean stop deregisters at once
            if self._heartbeat_task:
                self._heartbeat_task.cancel()
                await asyncio.gather(self._heartbeat_task, return_exceptions=True)
            if self._session:
                await self._session.close()
            await self.registry.close()


AGENT_KEY = web.AppKey("moorage_agent", Agent)


def _kernel_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["kernel_id"])
    except ValueError:
        raise InvalidAPIParameters("kernel_id: not a valid UUID") from None


async def create_kernel(request: web.Request) -> web.Response:
    body = await read_signed_json(request)
    try:
        spec = KernelSpec.model_validate(body)
    except ValidationError as exc:
        raise invalid_params_from_validation(exc) from None
    registry = request.app[AGENT_KEY].registry
    data = (await registry.create_kernel(spec)).model_dump(mode="json")
    k = registry.get(spec.kernel_id)
    data["allocation"] = k.allocation_json() if k else {}
    return web.json_response(data)


async def destroy_kernel(request: web.Request) -> web.Response:
    await request.app[AGENT_KEY].registry.destroy_kernel(_kernel_id(request))
    return web.json_response({"ok": True})


async def list_kernels(request: web.Request) -> web.Response:
    return web.json_response({"kernels": request.app[AGENT_KEY].registry.list_reports_json()})


async def kernel_logs(request: web.Request) -> web.Response:
    raw = request.query.get("tail", str(DEFAULT_LOG_TAIL))
    try:
        tail = int(raw)
    except ValueError:
        raise InvalidAPIParameters("tail: must be an integer") from None
    if not 0 <= tail <= MAX_LOG_TAIL_LINES:
        raise InvalidAPIParameters(f"tail: must be between 0 and {MAX_LOG_TAIL_LINES}")
    registry = request.app[AGENT_KEY].registry
    logs = await asyncio.to_thread(registry.logs, _kernel_id(request), tail)
    return web.json_response(logs)


async def health(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    data = agent.info().model_dump(mode="json")
    usage = agent.registry.gpu_usage()
    data["gpus"] = [{"index": g.index, "uuid": g.uuid, "name": g.name, "memory": g.memory, "fake": g.fake,
                     "used": usage.get(g.uuid, "0.00")} for g in agent.gpus]
    data["recovery"] = agent.registry.recovery
    data["registered"] = bool(agent.lease and agent.lease.holding)
    return web.json_response(data)


def build_agent_app(config: AgentConfig, runtime: KernelRuntime | None = None) -> web.Application:
    """The agent as an aiohttp app. Raises ``common.config.ConfigError`` when the cluster secret is missing.

    ``runtime`` overrides the one named by ``[agent] runtime`` (tests, future runtimes).
    """
    secret = config.cluster_secret()
    app = web.Application(middlewares=[problem_middleware, signed_request_middleware(secret, "/rpc/")])
    agent = Agent(config, secret, runtime)
    app[AGENT_KEY] = agent
    app.cleanup_ctx.append(agent.context)
    app.router.add_post("/rpc/kernels", create_kernel)
    app.router.add_get("/rpc/kernels", list_kernels)
    app.router.add_delete("/rpc/kernels/{kernel_id}", destroy_kernel)
    app.router.add_get("/rpc/kernels/{kernel_id}/logs", kernel_logs)
    app.router.add_get("/rpc/health", health)
    return app
