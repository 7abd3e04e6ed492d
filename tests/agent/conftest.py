"""Fixtures for the agent tests: an in-process agent on a random port, a fake manager that records signed
heartbeats, and model folders holding a tiny stdlib HTTP server."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from agent.config import AgentConfig, load_agent_config
from agent.kernels import KernelRegistry
from agent.server import AGENT_KEY, build_agent_app
from common.config import deep_merge
from common.protocol import AgentHeartbeat
from common.signing import SignedClient, read_signed_json, signed_request_middleware

SECRET = "test-cluster-secret-0123456789abcdef0123456789"
# MOORAGE_TEST_AGENT_SANDBOX=none runs the suite as on a host without bubblewrap.
SANDBOX = "none" if os.environ.get("MOORAGE_TEST_AGENT_SANDBOX") == "none" else "auto"
SANDBOXED = SANDBOX == "auto"
# The sandbox is part of what is tested: a missing bubblewrap must fail the suite, not quietly weaken it
# (`make test` installs it). Run with MOORAGE_TEST_AGENT_SANDBOX=none to test the unsandboxed fallback.
assert not SANDBOXED or shutil.which("bwrap"), "bubblewrap is not installed: run `make system-deps`"
REPLICA_SERVER = Path(__file__).with_name("replica_server.py")
START_COMMAND = "python3 {model_path}/replica_server.py {port}"  # works unsandboxed too


def free_port_range(width: int = 200) -> list[int]:
    """A random sub-range, so concurrent test runs on one machine rarely compete for ports."""
    low = random.randrange(20000, 60000 - width)
    return [low, low + width - 1]


def make_config(tmp_path: Path, overrides: dict[str, Any] | None = None) -> AgentConfig:
    """A test config under ``tmp_path``; ``overrides`` is ``{section: {key: value}}``."""
    base: dict[str, Any] = {
        "agent": {
            "id": "test-agent", "state_dir": str(tmp_path / "state"), "storage_root": str(tmp_path / "storage"),
            "port_range": free_port_range(), "heartbeat_interval": 0.5, "monitor_interval": 0.05,
            "stop_grace": 3.0, "tcp_probe_interval": 0.2,
        },
        "secrets": {"cluster_secret": SECRET},
        "local": {"sandbox": SANDBOX},
    }
    return load_agent_config(None, overrides=deep_merge(base, overrides or {}), environ={})


def definition(start_command: str = START_COMMAND, *, health: dict[str, Any] | None = None,
               actions: list[dict[str, Any]] | None = None, model_path: str = "/models",
               shell: str | None = "/bin/sh", name: str = "tiny-model") -> dict[str, Any]:
    service: dict[str, Any] = {"start_command": start_command, "port": 8000, "shell": shell}
    if health is not False:
        service["health_check"] = health or {"path": "/health", "interval": 0.2, "max_retries": 2,
                                             "max_wait_time": 1.0, "initial_delay": 20.0}
    if actions:
        service["pre_start_actions"] = actions
    return {"models": [{"name": name, "model_path": model_path, "service": service}]}


@dataclass
class FakeManager:
    url: str = ""
    heartbeats: list[AgentHeartbeat] = field(default_factory=list)
    destroy: list[str] = field(default_factory=list)  # returned (once) in the next reply
    rejected: int = 0

    def kernel(self, kernel_id: uuid.UUID | str) -> dict[str, Any] | None:
        """The kernel as the latest heartbeat reported it."""
        for hb in reversed(self.heartbeats):
            for k in hb.kernels:
                if str(k.kernel_id) == str(kernel_id):
                    return k.model_dump(mode="json")
            return None
        return None


@dataclass
class AgentHarness:
    url: str
    client: SignedClient
    app: web.Application
    config: AgentConfig
    manager: FakeManager | None
    session: aiohttp.ClientSession
    runner: web.AppRunner | None = None

    @property
    def registry(self) -> KernelRegistry:
        return self.app[AGENT_KEY].registry

    @property
    def storage_root(self) -> Path:
        return self.config.agent.storage_root

    def model_folder(self, name: str = "tiny", script: Path = REPLICA_SERVER) -> str:
        folder = self.storage_root / name
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(script, folder / "replica_server.py")
        return name

    def spec(self, folder: str = "tiny", endpoint_id: uuid.UUID | None = None, **fields: Any) -> dict[str, Any]:
        body = {
            "kernel_id": str(uuid.uuid4()), "endpoint_id": str(endpoint_id or uuid.uuid4()),
            "route_id": str(uuid.uuid4()), "endpoint_name": "ep", "folder_relpath": folder,
            "model_definition": definition(),
        }
        body.update(fields)
        return body

    def kernel_dir(self, kernel_id: str) -> Path:
        return self.config.agent.state_dir / "kernels" / str(kernel_id)

    async def rpc(self, method: str, path: str, payload: Any = None) -> Any:
        return await self.client.call(method, self.url, path, payload)

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.rpc("POST", "/rpc/kernels", body)

    async def get_kernel(self, kernel_id: str) -> dict[str, Any] | None:
        data = await self.rpc("GET", "/rpc/kernels")
        return next((k for k in data["kernels"] if k["kernel_id"] == str(kernel_id)), None)

    async def wait_kernel(self, kernel_id: str, predicate: Callable[[dict[str, Any]], bool],
                          timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            last = await self.get_kernel(kernel_id)
            if last is not None and predicate(last):
                return last
            await asyncio.sleep(0.05)
        raise AssertionError(f"kernel {kernel_id} did not reach the expected state in {timeout}s; last: {last}")

    async def wait_healthy(self, kernel_id: str, timeout: float = 30.0) -> dict[str, Any]:
        return await self.wait_kernel(
            kernel_id, lambda k: (k["status"], k["health"]) == ("running", "healthy") or k["status"] in (
                "failed", "exited", "terminated"), timeout)

    async def replica_get(self, port: int, path: str) -> tuple[int, Any]:
        async with self.session.get(f"http://127.0.0.1:{port}{path}",
                                    timeout=aiohttp.ClientTimeout(total=5)) as resp:
            return resp.status, json.loads(await resp.read())


async def wait_for(predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 20.0,
                   what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def start_fake_manager() -> tuple[FakeManager, web.AppRunner]:
    manager = FakeManager()

    async def heartbeat(request: web.Request) -> web.Response:
        hb = AgentHeartbeat.model_validate(await read_signed_json(request))
        manager.heartbeats.append(hb)
        destroy, manager.destroy = manager.destroy, []
        return web.json_response({"ok": True, "destroy": destroy})

    app = web.Application(middlewares=[signed_request_middleware(SECRET, "/internal/")])
    app.router.add_post("/internal/heartbeat", heartbeat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # a started site has a server
    manager.url = f"http://127.0.0.1:{port}"
    return manager, runner


async def start_agent(config: AgentConfig) -> tuple[web.AppRunner, str]:
    app = build_agent_app(config)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # a started site has a server
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def fake_manager() -> AsyncIterator[FakeManager]:
    manager, runner = await start_fake_manager()
    try:
        yield manager
    finally:
        await runner.cleanup()


@pytest.fixture
def agent_overrides() -> dict[str, Any]:
    """Per-test config overrides ``{section: {key: value}}`` (parametrize this name to change them)."""
    return {}


@asynccontextmanager
async def running_agent(config: AgentConfig, manager: FakeManager | None = None,
                        destroy: bool = True) -> AsyncIterator[AgentHarness]:
    """An agent app on 127.0.0.1:<random> with a signed client; its kernels are destroyed afterwards."""
    runner, url = await start_agent(config)
    session = aiohttp.ClientSession()
    harness = AgentHarness(url=url, client=SignedClient(session, SECRET), app=runner.app, config=config,
                           manager=manager, session=session, runner=runner)
    harness.model_folder()
    try:
        yield harness
    finally:
        if destroy and harness.runner is runner:
            await harness.registry.destroy_all()
        await session.close()
        await runner.cleanup()


@pytest.fixture
async def agent(tmp_path: Path, fake_manager: FakeManager,
                agent_overrides: dict[str, Any]) -> AsyncIterator[AgentHarness]:
    config = make_config(tmp_path, deep_merge({"agent": {"manager_url": fake_manager.url}}, agent_overrides))
    async with running_agent(config, fake_manager) as harness:
        yield harness


@pytest.fixture(scope="session")
def dockerd() -> Any:
    """A private real dockerd (vfs, no bridge, no iptables) with the python3 test image imported."""
    from tests.agent.dockerd import running_dockerd

    with running_dockerd() as daemon:
        yield daemon
