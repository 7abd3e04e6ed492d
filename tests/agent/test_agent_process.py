"""The agent as its own process (``python -m agent``), its heartbeat loop alone, and log rotation."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
import uuid
from pathlib import Path

import aiohttp

from agent.heartbeat import HeartbeatLoop
from agent.runtime.procs import group_members
from common.protocol import AgentHeartbeat
from common.signing import SignedClient
from tests.agent.conftest import (
    REPLICA_SERVER,
    SANDBOX,
    SECRET,
    START_COMMAND,
    AgentHarness,
    definition,
    free_port_range,
    make_config,
    running_agent,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_standalone_agent_serves_and_stops_on_sigterm_leaving_replicas(tmp_path: Path) -> None:
    port = _free_port()
    low, high = free_port_range()
    (tmp_path / "storage" / "tiny").mkdir(parents=True)
    (tmp_path / "storage" / "tiny" / "replica_server.py").write_text(REPLICA_SERVER.read_text())
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[agent]\nid = "standalone"\nlisten_port = {port}\nport_range = [{low}, {high}]\n'
        f'state_dir = "{tmp_path / "state"}"\nstorage_root = "{tmp_path / "storage"}"\n'
        f'[local]\nsandbox = "{SANDBOX}"\n')
    env = {**os.environ, "MOORAGE_AGENT__SECRETS__CLUSTER_SECRET": SECRET}
    log_path = tmp_path / "agent.log"
    with open(log_path, "wb") as log_file:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "agent", "--config", str(config), cwd=REPO,
                                                    env=env, stdout=log_file, stderr=log_file)
    pgid = 0
    try:
        async with aiohttp.ClientSession() as session:
            client = SignedClient(session, SECRET, timeout=5)
            url = f"http://127.0.0.1:{port}"

            async def up() -> bool:
                try:
                    return (await client.call("GET", url, "/rpc/health"))["agent_id"] == "standalone"
                except (aiohttp.ClientError, OSError):
                    return False

            await wait_for(up, 30, "the agent to listen")
            harness = AgentHarness(url=url, client=client, app=None, config=make_config(tmp_path),  # type: ignore[arg-type]  # app, manager: unused here
                                   manager=None, session=session)
            body = harness.spec()
            await harness.create(body)
            k = await harness.wait_healthy(body["kernel_id"])
            assert k["status"] == "running"
            pgid = int(k["handle"])
            _, info = await harness.replica_get(k["port"], "/info")
            assert info["env"]["MOORAGE_AGENT__SECRETS__CLUSTER_SECRET"] is None, "the agent's env leaked"

            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 20) == 0
            status, _ = await harness.replica_get(k["port"], "/health")
            assert status == 200, "replicas survive the agent's shutdown"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        stderr = log_path.read_text()
        if pgid:
            os.killpg(pgid, signal.SIGKILL)
            await wait_for(lambda: not group_members(pgid), 10, "cleanup")
    assert "Traceback" not in stderr, stderr


async def test_unreachable_manager_is_logged_at_most_once(caplog) -> None:
    port = _free_port()  # nothing listens there
    built = []

    def build() -> AgentHeartbeat:
        built.append(time.monotonic())
        return AgentHeartbeat(agent_id="a", rpc_url="http://x", replica_host="127.0.0.1")

    async def destroy(kernel_id: uuid.UUID) -> None:
        raise AssertionError("nothing to destroy")

    async with aiohttp.ClientSession() as session:
        loop = HeartbeatLoop(SignedClient(session, SECRET), f"http://127.0.0.1:{port}", build, destroy,
                             interval=0.05)
        with caplog.at_level(logging.WARNING, logger="agent.heartbeat"):
            task = asyncio.create_task(loop.run())
            await wait_for(lambda: len(built) >= 5, 10, "several heartbeat attempts")
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert loop.sent == 0
    assert len([r for r in caplog.records if "heartbeat to" in r.getMessage()]) == 1


async def test_replica_logs_are_bounded(tmp_path: Path) -> None:
    config = make_config(tmp_path, {"agent": {"max_log_bytes": 4096}})
    chatty = f"i=0; while [ $i -lt 2000 ]; do echo chatty-line-$i; i=$((i+1)); done; exec {START_COMMAND}"
    async with running_agent(config) as harness:
        body = harness.spec(model_definition=definition(chatty))
        await harness.create(body)
        await harness.wait_healthy(body["kernel_id"])
        log_file = harness.kernel_dir(body["kernel_id"]) / "stdout.log"
        await wait_for(lambda: log_file.stat().st_size <= 4096, 10, "the log to be rotated")
        assert (log_file.parent / "stdout.log.1").exists()
        logs = await harness.rpc("GET", f"/rpc/kernels/{body['kernel_id']}/logs?tail=1")
        assert logs["stdout"] == "chatty-line-1999\n"
