"""Simulated agents: real aiohttp servers (one port each) speaking the signed agent RPC, real heartbeat loops.

A kernel "starts" instantly: ``POST /rpc/kernels`` records a :class:`KernelReport` that is ``running`` and
``healthy`` at once and wakes the heartbeat, as the real agent's registry does on a transition. Requests are
verified with the real :func:`common.signing.signed_request_middleware`; heartbeats go through the real
:class:`agent.heartbeat.HeartbeatLoop` (full kernel list, signed with the cluster secret).
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
import uuid
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import ValidationError

from agent.heartbeat import HeartbeatLoop
from common.errors import InvalidAPIParameters, invalid_params_from_validation, problem_middleware
from common.protocol import AgentHeartbeat, KernelReport, KernelSpec
from common.signing import SignedClient, read_signed_json, signed_request_middleware
from common.status import KernelStatus, RouteHealth

fake_ports = itertools.count(40000)  # ports the simulated replicas "listen" on


class TimedClient(SignedClient):
    """A :class:`SignedClient` that records the latency of each call (the heartbeat round trip)."""

    def __init__(self, session: aiohttp.ClientSession, secret: str, sink: list[tuple[float, float]],
                 failures: list[float]):
        super().__init__(session, secret)
        self._sink = sink
        self._failures = failures

    async def call(self, method: str, base_url: str, path: str, payload: Any = None,
                   timeout: float | None = None) -> Any:
        start = time.perf_counter()
        try:
            return await super().call(method, base_url, path, payload, timeout)
        except Exception:
            self._failures.append(time.time())
            raise
        finally:
            self._sink.append((time.time(), time.perf_counter() - start))


class SimAgent:
    """One agent: its own listening socket, kernel table and heartbeat loop."""

    def __init__(self, agent_id: str, secret: str, manager_url: str, client: SignedClient, interval: float,
                 slots: dict[str, str]):
        self.agent_id = agent_id
        self.secret = secret
        self.kernels: dict[uuid.UUID, KernelReport] = {}
        self.slots = slots
        self.rpc_calls = 0
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.rpc_url = f"http://127.0.0.1:{self.port}"
        self.heartbeat = HeartbeatLoop(client, manager_url, self.payload, self.destroy, interval)
        self._runner: web.AppRunner | None = None
        self._task: asyncio.Task[None] | None = None

    def payload(self) -> AgentHeartbeat:
        return AgentHeartbeat.model_construct(
            agent_id=self.agent_id, rpc_url=self.rpc_url, replica_host="127.0.0.1", scaling_group="default",
            architecture="x86_64", runtime="local", available_slots=self.slots, version="bench",
            kernels=list(self.kernels.values()))

    async def destroy(self, kernel_id: uuid.UUID) -> None:
        if self.kernels.pop(kernel_id, None) is not None:
            self.heartbeat.wake()

    async def _create(self, request: web.Request) -> web.Response:
        self.rpc_calls += 1
        try:
            spec = KernelSpec.model_validate(await read_signed_json(request))
        except ValidationError as exc:
            raise invalid_params_from_validation(exc) from None
        report = self.kernels.get(spec.kernel_id)
        if report is None:  # idempotent on kernel_id, like the real registry
            now = time.time()
            report = KernelReport(kernel_id=spec.kernel_id, endpoint_id=spec.endpoint_id, route_id=spec.route_id,
                                  status=KernelStatus.RUNNING, health=RouteHealth.HEALTHY, host="127.0.0.1",
                                  port=next(fake_ports), handle="sim", started_at=now, updated_at=now)
            self.kernels[spec.kernel_id] = report
            self.heartbeat.wake()
        return web.json_response(report.model_dump(mode="json"))

    async def _destroy(self, request: web.Request) -> web.Response:
        self.rpc_calls += 1
        try:
            kernel_id = uuid.UUID(request.match_info["kernel_id"])
        except ValueError:
            raise InvalidAPIParameters("kernel_id: not a valid UUID") from None
        await self.destroy(kernel_id)
        return web.json_response({"ok": True})

    async def _list(self, request: web.Request) -> web.Response:
        return web.json_response({"kernels": [k.model_dump(mode="json") for k in self.kernels.values()]})

    async def start(self, delay: float) -> None:
        """Serve the RPC API, then start heartbeating after ``delay`` (spreads the agents over the interval)."""
        app = web.Application(middlewares=[problem_middleware, signed_request_middleware(self.secret, "/rpc/")])
        app.router.add_post("/rpc/kernels", self._create)
        app.router.add_get("/rpc/kernels", self._list)
        app.router.add_delete("/rpc/kernels/{kernel_id}", self._destroy)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock).start()
        self._task = asyncio.create_task(self._heartbeats(delay), name=f"heartbeat-{self.agent_id}")

    async def _heartbeats(self, delay: float) -> None:
        await asyncio.sleep(delay)
        await self.heartbeat.run()

    async def stop(self) -> None:
        """Die: no more heartbeats, RPC port closed (the manager must notice by the heartbeat timeout)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class AgentFleet:
    """N simulated agents in this process sharing one client session for their heartbeats."""

    def __init__(self, count: int, secret: str, manager_url: str, interval: float, slots: dict[str, str]):
        self.secret = secret
        self.manager_url = manager_url
        self.interval = interval
        self.slots = slots
        self.count = count
        self.heartbeat_latencies: list[tuple[float, float]] = []  # (wall time, seconds)
        self.heartbeat_failures: list[float] = []  # wall times of failed heartbeats (timeouts, errors)
        self.agents: list[SimAgent] = []
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        client = TimedClient(self._session, self.secret, self.heartbeat_latencies, self.heartbeat_failures)
        self.agents = [SimAgent(f"sim-{i:03d}", self.secret, self.manager_url, client, self.interval, self.slots)
                       for i in range(self.count)]
        for i, agent in enumerate(self.agents):
            await agent.start(delay=self.interval * i / self.count)

    def alive(self) -> list[SimAgent]:
        return [a for a in self.agents if a._runner is not None]

    async def close(self) -> None:
        await asyncio.gather(*(a.stop() for a in self.agents), return_exceptions=True)
        if self._session is not None:
            await self._session.close()
