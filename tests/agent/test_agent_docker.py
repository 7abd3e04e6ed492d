"""The docker runtime against a real, private dockerd (tests/agent/dockerd.py) and a debootstrapped image."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from agent.config import DockerSection
from agent.runtime.base import ReplicaPlan
from agent.runtime.docker import container_config, container_name
from tests.agent.conftest import AgentHarness, definition, make_config, running_agent, wait_for
from tests.agent.dockerd import IMAGE, Dockerd


def docker_config(tmp_path: Path, daemon: Dockerd, extra: dict[str, Any] | None = None):
    overrides: dict[str, Any] = {"agent": {"runtime": "docker", "stop_grace": 2.0},
                                 "docker": {"socket": daemon.socket, "pull": "never", "shm_size": "64m"}}
    for section, values in (extra or {}).items():
        overrides.setdefault(section, {}).update(values)
    return make_config(tmp_path, overrides)


def inspect(daemon: Dockerd, ident: str) -> dict[str, Any]:
    return json.loads(daemon.cli("inspect", ident).stdout)[0]


def test_container_config_fake_gpu_limits_labels_and_mounts(tmp_path: Path) -> None:
    plan = ReplicaPlan(
        kernel_id="k1", endpoint_id="e1", route_id="r1", port=30123, model_name="m", model_path="/models/llm",
        mount_destination="/models", model_folder=tmp_path / "folder", environ={"MY": "1", "PORT": "bad"},
        start_command="serve", image="img:1", resource_slots={"cpu": "1.5", "mem": "536870912"},
        platform_environ={"CUDA_VISIBLE_DEVICES": "GPU-fake-0"}, gpu_devices=["GPU-fake-0"],
        labels={"ai.moorage.endpoint-name": "svc"})
    cfg = container_config(plan, DockerSection(), "agent-1", tmp_path / "launch", tmp_path / "work", 3000007)
    host = cfg["HostConfig"]
    # hardened: its own empty network, its own uid, no capabilities, no new privileges, read-only root
    assert host["NetworkMode"] == "none" and cfg["User"] == "3000007:3000007" and host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges"] and host["ReadonlyRootfs"] is True
    assert host["PidsLimit"] == 4096 and "/tmp" in host["Tmpfs"]
    assert sorted(b.split(":")[1] for b in host["Binds"]) == ["/home/work", "/models", "/opt/moorage"]
    image_user = container_config(plan, DockerSection(run_as="image", network="host"), "agent-1",
                                  tmp_path / "launch", tmp_path / "work")
    assert "User" not in image_user and "NET_RAW" in image_user["HostConfig"]["CapDrop"]
    assert image_user["HostConfig"]["NetworkMode"] == "host"
    assert cfg["Image"] == "img:1" and cfg["Entrypoint"] == ["python3"]
    assert cfg["Cmd"] == ["/opt/moorage/launcher.py", "/opt/moorage/spec.json"]
    env = dict(e.split("=", 1) for e in cfg["Env"])
    assert env["PORT"] == "30123" and env["MY"] == "1" and env["BACKEND_MODEL_PATH"] == "/models/llm"
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-fake-0" and "PATH" not in env
    assert host["Init"] is True
    assert host["NanoCpus"] == 1_500_000_000 and host["Memory"] == 536870912
    assert f"{tmp_path / 'folder'}:/models:ro" in host["Binds"]
    assert host["DeviceRequests"] == [{"Driver": "nvidia", "DeviceIDs": ["GPU-fake-0"],
                                       "Capabilities": [["gpu", "compute", "utility"]]}]
    assert cfg["Labels"]["ai.moorage.kernel"] == "k1" and cfg["Labels"]["ai.moorage.agent"] == "agent-1"
    assert cfg["Labels"]["ai.moorage.route"] == "r1" and cfg["Labels"]["ai.moorage.endpoint"] == "e1"


async def _create_healthy(agent: AgentHarness, body: dict[str, Any], timeout: float = 90) -> dict[str, Any]:
    await agent.create(body)
    k = await agent.wait_healthy(body["kernel_id"], timeout)
    assert (k["status"], k["health"]) == ("running", "healthy"), k
    return k


@pytest.mark.e2e
async def test_docker_replicas_serve_with_limits_labels_logs_and_leave_nothing(tmp_path: Path,
                                                                                dockerd: Dockerd) -> None:
    config = docker_config(tmp_path, dockerd)
    actions = [{"action": "write_file", "args": {"filename": "/home/work/hello.txt", "body": ["port {port}"]}},
               {"action": "log", "args": {"message": "pre-start ran in the container"}}]
    async with running_agent(config) as agent:
        endpoint = uuid.uuid4()
        bodies = [agent.spec(endpoint_id=endpoint, image=IMAGE, model_definition=definition(actions=actions),
                             resource_slots={"cpu": "0.5", "mem": "256m"}, environ={"MY_VAR": "x"})
                  for _ in range(2)]
        t0 = time.monotonic()
        kernels = await asyncio.gather(*(_create_healthy(agent, b) for b in bodies))
        elapsed = time.monotonic() - t0
        print(f"\nMEASURE docker: 2 containers created → healthy (vfs) in {elapsed:.2f}s")
        assert len({k["port"] for k in kernels}) == 2, "two replicas of one endpoint need two host ports"
        for body, k in zip(bodies, kernels, strict=True):
            status, info = await agent.replica_get(k["port"], "/info")
            assert status == 200
            assert info["env"]["PORT"] == str(k["port"]) and info["env"]["BACKEND_MODEL_NAME"] == "tiny-model"
            assert info["env"]["BACKEND_MODEL_PATH"] == "/models" and info["env"]["MY_VAR"] == "x"
            assert info["executable"] == "/usr/bin/python3" and not info["models_writable"]
            assert info["work_writable"] and info["env"]["HOME"] == "/home/work"
            status, hello = await agent.replica_get(k["port"], "/read?path=/home/work/hello.txt")
            assert hello["text"] == f"port {k['port']}\n"
            data = inspect(dockerd, k["handle"])
            assert data["Name"] == "/" + container_name(body["kernel_id"])
            labels = data["Config"]["Labels"]
            assert labels["ai.moorage.kernel"] == body["kernel_id"] and labels["ai.moorage.agent"] == "test-agent"
            assert labels["ai.moorage.endpoint"] == str(endpoint) and labels["ai.moorage.route"] == body["route_id"]
            host = data["HostConfig"]
            assert host["NetworkMode"] == "none" and host["NanoCpus"] == 500_000_000
            assert host["Memory"] == 256 * 1024 * 1024
            mounts = {m["Destination"]: m for m in data["Mounts"]}
            assert mounts["/models"]["RW"] is False and mounts["/opt/moorage"]["RW"] is True
            logs = await agent.rpc("GET", f"/rpc/kernels/{body['kernel_id']}/logs?tail=50")
            assert "pre-start ran in the container" in logs["stdout"]
        for body in bodies:
            await agent.rpc("DELETE", f"/rpc/kernels/{body['kernel_id']}")
            assert (await agent.get_kernel(body["kernel_id"]))["status"] == "terminated"
        assert dockerd.containers() == [], "destroy must leave no container behind"


@pytest.mark.e2e
async def test_docker_failures_are_reported_with_exit_codes(tmp_path: Path, dockerd: Dockerd) -> None:
    config = docker_config(tmp_path, dockerd)
    async with running_agent(config) as agent:
        bad = agent.spec(image=IMAGE, model_definition=definition(
            actions=[{"action": "run_command", "args": {"command": ["sh", "-c", "echo nope >&2; exit 3"]}}]))
        await agent.create(bad)
        k = await agent.wait_kernel(bad["kernel_id"], lambda k: k["status"] == "failed", 60)
        assert k["error"]["type"] == "prestart_failed" and "nope" in k["error"]["message"]

        good = agent.spec(image=IMAGE)
        k = await _create_healthy(agent, good)
        dockerd.cli("kill", k["handle"])  # SIGKILL inside the container: the replica dies
        k = await agent.wait_kernel(good["kernel_id"], lambda k: k["status"] == "exited", 30)
        assert k["error"]["exit_code"] == 137 and "SIGKILL" in k["error"]["message"]
        await wait_for(lambda: not dockerd.containers(), 20, "the dead container to be removed")

        missing = agent.spec(image="moorage-test/does-not-exist:1")
        await agent.create(missing)
        k = await agent.wait_kernel(missing["kernel_id"], lambda k: k["status"] == "failed", 30)
        assert k["error"]["type"] == "runtime_error" and "not present" in k["error"]["message"]


@pytest.mark.e2e
async def test_docker_agent_restart_readopts_by_labels_and_removes_orphans(tmp_path: Path,
                                                                           dockerd: Dockerd) -> None:
    config = docker_config(tmp_path, dockerd)
    async with running_agent(config, destroy=False) as agent:
        keep, die = agent.spec(image=IMAGE), agent.spec(image=IMAGE)
        kept, dead = await asyncio.gather(_create_healthy(agent, keep), _create_healthy(agent, die))
    # The agent is gone; its replicas keep serving. Meanwhile one dies and a stray container appears.
    status, _ = await _get(agent, kept["port"])
    assert status == 200
    dockerd.cli("kill", dead["handle"])
    orphan = dockerd.cli("run", "-d", "--network", "host", "--label", "ai.moorage.managed=true",
                         "--label", "ai.moorage.agent=test-agent", "--label", f"ai.moorage.kernel={uuid.uuid4()}",
                         IMAGE, "sleep", "600").stdout.strip()
    try:
        async with running_agent(config) as again:
            recovery = (await again.rpc("GET", "/rpc/health"))["recovery"]
            print(f"\nMEASURE docker: agent restart re-adoption took {recovery['seconds']:.3f}s")
            assert recovery["adopted"] == [keep["kernel_id"]] and recovery["died"] == [die["kernel_id"]]
            # The stray container goes; so does the dead one's (by its cleanup or as a container without a
            # live kernel, whichever comes first).
            assert orphan in recovery["orphans_removed"]
            assert set(recovery["orphans_removed"]) <= {orphan, dead["handle"]}
            k = await again.wait_healthy(keep["kernel_id"])
            assert (k["status"], k["handle"], k["port"]) == ("running", kept["handle"], kept["port"])
            d = await again.get_kernel(die["kernel_id"])
            assert d["status"] == "exited" and d["error"]["exit_code"] == 137
            assert "while the agent was down" in d["error"]["message"]
            assert len((await again.rpc("GET", "/rpc/kernels"))["kernels"]) == 2
            await wait_for(lambda: dockerd.containers() == [kept["handle"]], 20,
                           "only the adopted container to remain")
        assert dockerd.containers() == []
    finally:
        dockerd.cli("rm", "-f", orphan, check=False)


async def _get(agent: AgentHarness, port: int) -> tuple[int, Any]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        agent.session = session
        return await agent.replica_get(port, "/health")


@pytest.mark.parametrize("runtime", ["docker"])
def test_docker_runtime_config_requires_a_reachable_daemon(tmp_path: Path, runtime: str) -> None:
    from agent.runtime.base import RuntimeUnavailable
    from agent.runtime.docker import DockerRuntime

    config = make_config(tmp_path, {"agent": {"runtime": runtime},
                                    "docker": {"socket": f"unix://{tmp_path}/nothing.sock"}})
    with pytest.raises(RuntimeUnavailable, match="cannot reach dockerd"):
        asyncio.run(DockerRuntime(config).prepare())
