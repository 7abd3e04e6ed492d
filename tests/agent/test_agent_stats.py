"""Per-replica utilisation (agent.stats): the pure pieces, the /proc sampler on a real process group, and the
stats reaching the manager in the heartbeats of a real agent."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from agent.stats import UsageSample, docker_usage, proc_group_usage, requested_memory, utilisation
from tests.agent.conftest import AgentHarness, make_config, running_agent, wait_for

BUSY = "import time\nx = bytearray(48 * 2**20)\nx[::4096] = b'1' * len(x[::4096])\nwhile True: pass\n"


def test_utilisation_from_two_samples() -> None:
    first = utilisation(None, 10.0, UsageSample(5.0, 100 * 2**20), 400 * 2**20, wall=1000.0)
    assert first == {"mem_bytes": 100 * 2**20, "mem_util": 25.0, "collected_at": 1000.0}  # no cpu yet
    second = utilisation((10.0, UsageSample(5.0, 0)), 12.0, UsageSample(8.0, 50 * 2**20, mem_limit=100 * 2**20),
                         400 * 2**20, wall=1002.0)
    assert second["cpu_util"] == 150.0 and second["mem_util"] == 50.0  # the runtime's own limit wins
    # a process that left with its CPU time: never negative
    assert utilisation((10.0, UsageSample(9.0, 0)), 11.0, UsageSample(2.0, 0), None, wall=0)["cpu_util"] == 0.0
    assert "mem_util" not in utilisation(None, 0, UsageSample(0, 1), None, wall=0)


def test_requested_memory() -> None:
    assert requested_memory({"mem": "64m"}) == 64 * 2**20
    assert requested_memory({"cpu": "1"}) is None
    assert requested_memory({"mem": "lots"}) is None


def test_docker_usage_v1_and_v2() -> None:
    v2 = {"cpu_stats": {"cpu_usage": {"total_usage": 2_500_000_000}},
          "memory_stats": {"usage": 300 * 2**20, "limit": 2**30, "stats": {"inactive_file": 100 * 2**20}}}
    assert docker_usage(v2) == UsageSample(2.5, 200 * 2**20, 2**30)
    v1 = {"cpu_stats": {"cpu_usage": {"total_usage": 10**9}},
          "memory_stats": {"usage": 10 * 2**20, "limit": 2**62, "stats": {"total_inactive_file": 2**20}}}
    assert docker_usage(v1) == UsageSample(1.0, 9 * 2**20, None)  # no real limit: the host's memory is used
    assert docker_usage({"cpu_stats": {}, "memory_stats": {}}) is None  # a container that is not running


@pytest.fixture
def busy_group():
    """A process group of a shell and two spinning Pythons holding 48 MiB each."""
    script = f"{sys.executable} -c \"$BUSY\" & {sys.executable} -c \"$BUSY\" & wait"
    proc = subprocess.Popen(["/bin/sh", "-c", script], start_new_session=True, env={**os.environ, "BUSY": BUSY})
    try:
        yield proc.pid
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_proc_group_usage_of_a_real_process_group(busy_group: int) -> None:
    deadline = time.monotonic() + 10
    first = proc_group_usage([busy_group, 999_999_999]).get(busy_group)
    while first is None or first.mem_bytes < 90 * 2**20:  # until both processes touched their 48 MiB
        assert time.monotonic() < deadline, first
        time.sleep(0.05)
        first = proc_group_usage([busy_group]).get(busy_group)
    t0 = time.monotonic()
    time.sleep(1.0)
    second = proc_group_usage([busy_group])[busy_group]
    stats = utilisation((t0, first), time.monotonic(), second, 2**30, wall=time.time())
    # two spinning processes of one group, summed (loose bounds: the CI box has 2 cores shared with others)
    assert 10.0 <= stats["cpu_util"] <= 230.0, stats
    assert 90 * 2**20 <= second.mem_bytes <= 300 * 2**20
    assert 8.5 <= stats["mem_util"] <= 30.0
    assert proc_group_usage([999_999_999]) == {} and proc_group_usage([]) == {}


@pytest.mark.parametrize("agent_overrides", [{"agent": {"stats_interval": 0.3}}])
async def test_heartbeats_carry_replica_stats(agent: AgentHarness) -> None:
    body = agent.spec(resource_slots={"cpu": "1", "mem": "256m"})
    report = await agent.create(body)
    kernel_id = report["kernel_id"]
    await agent.wait_healthy(kernel_id)
    manager = agent.manager
    assert manager is not None

    def sampled() -> bool:
        k = manager.kernel(kernel_id)
        return bool(k and k.get("stats") and "cpu_util" in k["stats"])

    await wait_for(sampled, 15, "a heartbeat with cpu_util")
    stats = manager.kernel(kernel_id)["stats"]  # type: ignore[index]  # the kernel was reported
    assert 0 <= stats["cpu_util"] < 400 and stats["mem_bytes"] > 1 * 2**20
    assert 0 < stats["mem_util"] < 100  # of the 256 MiB the replica asked for
    assert abs(stats["collected_at"] - time.time()) < 30
    await agent.rpc("DELETE", f"/rpc/kernels/{kernel_id}")
    await agent.wait_kernel(kernel_id, lambda k: k["status"] == "terminated")
    k = await agent.get_kernel(kernel_id)
    assert k is not None and k.get("stats") is None  # a finished replica reports no utilisation


@pytest.mark.e2e
async def test_docker_runtime_samples_containers(tmp_path, dockerd) -> None:
    """The docker runtime's stats call on a real container (limit from the mem slot, CPU time grows)."""
    from tests.agent.dockerd import IMAGE

    config = make_config(tmp_path, {"agent": {"runtime": "docker", "stop_grace": 2.0},
                                    "docker": {"socket": dockerd.socket, "pull": "never"}})
    async with running_agent(config) as agent:
        body = agent.spec(image=IMAGE, resource_slots={"cpu": "0.5", "mem": "256m"})
        await agent.create(body)
        k = await agent.wait_healthy(body["kernel_id"], 90)
        assert (k["status"], k["health"]) == ("running", "healthy"), k
        kernel = agent.registry.get(uuid.UUID(body["kernel_id"]))
        assert kernel is not None and kernel.handle is not None
        runtime = agent.registry.runtime
        first = (await runtime.sample_usage([kernel.handle]))[kernel.handle.ident]
        await agent.replica_get(k["port"], "/info")
        await asyncio.sleep(0.2)
        second = (await runtime.sample_usage([kernel.handle]))[kernel.handle.ident]
        assert second.mem_limit == 256 * 2**20 and 0 < second.mem_bytes < 256 * 2**20
        assert second.cpu_seconds >= first.cpu_seconds > 0
        await agent.rpc("DELETE", f"/rpc/kernels/{body['kernel_id']}")
        assert await runtime.sample_usage([kernel.handle]) == {}  # gone: no sample, no error
