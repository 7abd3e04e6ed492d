"""The agent end to end in-process: signed RPC, real replica processes (bubblewrap sandbox when available),
real sockets, a fake manager receiving heartbeats. Every wait polls against a deadline."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.runtime.procs import group_members
from agent.server import AGENT_KEY
from common.signing import RPCError, sign_headers
from tests.agent.conftest import (
    SANDBOXED,
    SECRET,
    START_COMMAND,
    AgentHarness,
    FakeManager,
    definition,
    make_config,
    running_agent,
    wait_for,
)

TERMINAL = ("failed", "exited", "terminated")


def _cmdlines_containing(marker: str) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as fp:
                if marker.encode() in fp.read().replace(b"\0", b" "):
                    found.append(int(name))
            with open(f"/proc/{name}/stat") as fp:
                if fp.read().rsplit(")", 1)[1].split()[0] == "Z":
                    found.remove(int(name))
        except (OSError, ValueError):
            continue
    return found


@pytest.fixture
def marker() -> Iterator[str]:
    """A distinctive `sleep` argument to find a replica's children by; leftovers are killed afterwards
    (unsandboxed, a `setsid` child escapes the replica's process group, and a failed test leaves some)."""
    value = str(random.randrange(700_000, 999_999))
    yield value
    for pid in _cmdlines_containing(f"sleep {value}"):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


async def test_kernel_starts_healthy_in_its_sandbox(agent: AgentHarness) -> None:
    body = agent.spec(environ={"MY_VAR": "hello"})
    report = await agent.create(body)
    low, high = agent.config.agent.port_range
    assert report["status"] == "starting" and low <= report["port"] <= high and report["handle"]
    assert report["host"] == "127.0.0.1"

    k = await agent.wait_healthy(body["kernel_id"])
    assert (k["status"], k["health"], k["port"], k["error"]) == ("running", "healthy", report["port"], None)
    assert await agent.create(body) == k  # idempotent on kernel_id: same replica, same report

    status, info = await agent.replica_get(k["port"], "/info")
    assert status == 200
    env = info["env"]
    assert env["PORT"] == str(k["port"]) and info["argv"][-1] == str(k["port"])
    assert env["BACKEND_MODEL_NAME"] == "tiny-model" and env["MY_VAR"] == "hello"
    assert env["MOORAGE_ENDPOINT_ID"] == body["endpoint_id"] and env["MOORAGE_ROUTE_ID"] == body["route_id"]
    assert env["MOORAGE_AGENT__SECRETS__CLUSTER_SECRET"] is None
    assert env["PATH"].split(":")[0] == agent.config.local.extra_path[0]
    assert info["work_writable"] and info["tmp_writable"]
    if SANDBOXED:
        assert info["cwd"] == "/models" and env["BACKEND_MODEL_PATH"] == "/models"
        assert env["HOME"] == agent.config.local.work_mount
        assert not info["models_writable"], "the model folder must be read-only inside the sandbox"
        assert info["pid"] < 10, "the replica runs in its own pid namespace"

    logs = await agent.rpc("GET", f"/rpc/kernels/{body['kernel_id']}/logs?tail=50")
    assert set(logs) == {"stdout", "stderr"}
    health = await agent.rpc("GET", "/rpc/health")
    assert health["agent_id"] == "test-agent" and set(health["available_slots"]) >= {"cpu", "mem"}


async def test_two_replicas_of_one_endpoint_get_their_own_ports(agent: AgentHarness) -> None:
    endpoint = uuid.uuid4()
    bodies = [agent.spec(endpoint_id=endpoint) for _ in range(2)]
    for body in bodies:
        await agent.create(body)
    kernels = [await agent.wait_healthy(b["kernel_id"]) for b in bodies]
    assert [k["status"] for k in kernels] == ["running", "running"]
    assert kernels[0]["port"] != kernels[1]["port"]
    for k in kernels:
        status, info = await agent.replica_get(k["port"], "/info")
        assert status == 200 and info["env"]["PORT"] == str(k["port"])


async def test_pre_start_actions_take_effect(agent: AgentHarness) -> None:
    actions = [
        {"action": "mkdir", "args": {"path": "{work_dir}/conf/nested"}},
        {"action": "write_file", "args": {"filename": "{work_dir}/conf/nested/server.json",
                                          "body": ['{"port": {port}, "model": "{model_path}"}'], "mode": "600"}},
        {"action": "run_command", "args": {"command": ["sh", "-c", "echo from-command"]}, "ref": "cmd"},
        {"action": "write_tempfile", "args": {"body": ["import sys", "print('temp-{port}')"]}, "ref": "script"},
        {"action": "run_command", "args": {"command": ["{runtime_path}", "{script}"]}, "ref": "tmp_out"},
        {"action": "write_file", "args": {"filename": "{work_dir}/results.txt",
                                          "body": ["{cmd.out}", "{tmp_out[out]}", "{script}"]}},
        {"action": "log", "args": {"message": "pre-start done for {port}"}},
    ]
    body = agent.spec(model_definition=definition(actions=actions))
    await agent.create(body)
    k = await agent.wait_healthy(body["kernel_id"])
    assert k["status"] == "running", k
    work = agent.kernel_dir(body["kernel_id"]) / "work"
    expected_model = "/models" if SANDBOXED else str(agent.storage_root / "tiny")
    conf = work / "conf" / "nested" / "server.json"
    assert json.loads(conf.read_text()) == {"port": k["port"], "model": expected_model}
    assert oct(conf.stat().st_mode & 0o777) == "0o600"
    lines = (work / "results.txt").read_text().split("\n")
    assert lines[0] == "from-command" and lines[2] == f"temp-{k['port']}" and lines[4].endswith(".py")
    status, data = await agent.replica_get(k["port"], f"/read?path={lines[4]}")  # the temp file, seen by the replica
    assert status == 200 and "temp-{port}" not in data["text"] and f"temp-{k['port']}" in data["text"]
    logs = await agent.rpc("GET", f"/rpc/kernels/{body['kernel_id']}/logs?tail=20")
    assert f"pre-start done for {k['port']}" in logs["stdout"]


async def test_unknown_action_fails_the_start(agent: AgentHarness) -> None:
    actions = [{"action": "log", "args": {"message": "ok"}}, {"action": "download_weights", "args": {}}]
    body = agent.spec(model_definition=definition(actions=actions))
    await agent.create(body)
    k = await agent.wait_kernel(body["kernel_id"], lambda k: k["status"] in TERMINAL)
    assert k["status"] == "failed"
    assert k["error"]["type"] == "prestart_failed"
    assert "unknown action 'download_weights'" in k["error"]["message"]
    assert "pre_start_actions[1]" in k["error"]["message"]


async def test_failing_run_command_fails_the_start(agent: AgentHarness) -> None:
    actions = [{"action": "run_command", "args": {"command": ["sh", "-c", "echo cannot-fetch >&2; exit 9"]}}]
    body = agent.spec(model_definition=definition(actions=actions))
    await agent.create(body)
    k = await agent.wait_kernel(body["kernel_id"], lambda k: k["status"] in TERMINAL)
    assert k["status"] == "failed" and k["error"]["type"] == "prestart_failed"
    assert "exited with code 9" in k["error"]["message"] and "cannot-fetch" in k["error"]["message"]


async def test_exit_during_start_reports_code_and_stderr(agent: AgentHarness) -> None:
    body = agent.spec(model_definition=definition("echo boom >&2; exit 3"))
    await agent.create(body)
    k = await agent.wait_kernel(body["kernel_id"], lambda k: k["status"] in TERMINAL)
    assert k["status"] == "failed" and k["health"] == "unhealthy"
    assert k["error"]["type"] == "start_failed" and k["error"]["exit_code"] == 3
    assert "boom" in k["error"]["stderr_tail"]
    assert "exited with code 3" in k["error"]["message"]


async def test_missing_model_folder_fails_the_start(agent: AgentHarness) -> None:
    body = agent.spec(folder="not-there")
    report = await agent.create(body)
    assert report["status"] == "failed" and "does not exist" in report["error"]["message"]


@pytest.mark.parametrize("victim", ["leader", "server", "server-with-leftovers"])
async def test_killed_replica_is_reported_exited_and_cleaned_up(agent: AgentHarness, victim: str,
                                                                marker: str) -> None:
    command = START_COMMAND
    if victim == "server-with-leftovers":  # children that outlive the server must not hide its death
        command = f"sleep {marker} & (setsid sleep {marker} &) ; exec {START_COMMAND}"
    body = agent.spec(model_definition=definition(command))
    await agent.create(body)
    k = await agent.wait_healthy(body["kernel_id"])
    pgid = int(k["handle"])
    if victim == "leader":
        os.kill(pgid, signal.SIGKILL)
    else:
        servers = [pid for pid in group_members(pgid) if pid in _cmdlines_containing("replica_server.py")]
        assert servers
        os.kill(servers[-1], signal.SIGKILL)
    k = await agent.wait_kernel(body["kernel_id"], lambda k: k["status"] in TERMINAL)
    assert k["status"] == "exited" and k["health"] == "unhealthy"
    assert k["error"]["type"] == "exited" and k["error"]["exit_code"] == 128 + signal.SIGKILL
    assert "SIGKILL" in k["error"]["message"]
    await wait_for(lambda: not group_members(pgid), 10, "the rest of the replica's process group to be killed")
    if SANDBOXED:
        assert not _cmdlines_containing(f"sleep {marker}")


async def test_destroy_kills_the_whole_process_group(agent: AgentHarness, marker: str) -> None:
    command = f"sleep {marker} & (setsid sleep {marker} &) ; exec {START_COMMAND}"
    body = agent.spec(model_definition=definition(command))
    await agent.create(body)
    k = await agent.wait_healthy(body["kernel_id"])
    assert k["status"] == "running"
    pgid = int(k["handle"])
    assert len(_cmdlines_containing(f"sleep {marker}")) == 2
    assert group_members(pgid)

    started = time.monotonic()
    assert await agent.rpc("DELETE", f"/rpc/kernels/{body['kernel_id']}") == {"ok": True}
    assert time.monotonic() - started < agent.config.agent.stop_grace + 5
    assert not group_members(pgid)
    if SANDBOXED:  # the pid namespace also takes the process that left the group with setsid
        await wait_for(lambda: not _cmdlines_containing(f"sleep {marker}"), 5, "no sleep left")
    k = await agent.get_kernel(body["kernel_id"])
    assert k is not None and k["status"] == "terminated"
    with pytest.raises(aiohttp.ClientError):
        await agent.replica_get(k["port"], "/health")
    # idempotent, also for unknown ids
    assert await agent.rpc("DELETE", f"/rpc/kernels/{body['kernel_id']}") == {"ok": True}
    assert await agent.rpc("DELETE", f"/rpc/kernels/{uuid.uuid4()}") == {"ok": True}


async def test_rpc_requires_a_valid_signature(agent: AgentHarness) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(agent.url + "/rpc/kernels") as resp:
            assert resp.status == 401
            assert resp.content_type == "application/problem+json"
        headers = sign_headers("wrong-secret-wrong-secret", "GET", "/rpc/kernels", b"")
        async with session.get(agent.url + "/rpc/kernels", headers=headers) as resp:
            assert resp.status == 401
        body = json.dumps(agent.spec()).encode()
        headers = sign_headers(SECRET, "POST", "/rpc/kernels", body)
        async with session.post(agent.url + "/rpc/kernels", data=body + b" ", headers=headers) as resp:
            assert resp.status == 401  # the body was changed after signing
        stale = sign_headers(SECRET, "GET", "/rpc/kernels", b"", now=time.time() - 3600)
        async with session.get(agent.url + "/rpc/kernels", headers=stale) as resp:
            assert resp.status == 401
    assert (await agent.rpc("GET", "/rpc/kernels"))["kernels"] == []


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda b: b.pop("route_id"), "route_id"),
    (lambda b: b.update(kernel_id="not-a-uuid"), "kernel_id"),
    (lambda b: b.update(folder_relpath="../etc"), "folder_relpath"),
    (lambda b: b.update(mount_destination="/usr"), "mount_destination"),
    (lambda b: b.update(environ={"BAD NAME": "x"}), "environ.BAD NAME"),
    (lambda b: b["model_definition"]["models"][0]["service"].update(port=2000),
     "model_definition.models.0.service.port"),
])
async def test_invalid_bodies_are_400_naming_the_field(agent: AgentHarness, mutate: Any, field: str) -> None:
    body = agent.spec()
    mutate(body)
    with pytest.raises(RPCError) as info:
        await agent.create(body)
    assert info.value.status == 400
    assert field in info.value.body["detail"]
    assert (await agent.rpc("GET", "/rpc/kernels"))["kernels"] == []


async def test_logs_api_bounds(agent: AgentHarness) -> None:
    with pytest.raises(RPCError) as info:
        await agent.rpc("GET", f"/rpc/kernels/{uuid.uuid4()}/logs?tail=10")
    assert info.value.status == 404
    with pytest.raises(RPCError) as info:
        await agent.rpc("GET", f"/rpc/kernels/{uuid.uuid4()}/logs?tail=999999999")
    assert info.value.status == 400
    body = agent.spec(model_definition=definition(f"for i in 1 2 3; do echo out-$i; echo err-$i >&2; done; "
                                                  f"exec {START_COMMAND}"))
    await agent.create(body)
    await agent.wait_healthy(body["kernel_id"])
    logs = await agent.rpc("GET", f"/rpc/kernels/{body['kernel_id']}/logs?tail=2")
    assert logs == {"stdout": "out-2\nout-3\n", "stderr": "err-2\nerr-3\n"}


async def test_heartbeats_carry_the_kernel_list_and_apply_destroy(agent: AgentHarness) -> None:
    manager = agent.manager
    assert manager is not None
    await wait_for(lambda: manager.heartbeats, 10, "a first heartbeat")
    first = manager.heartbeats[0]
    assert first.agent_id == "test-agent" and first.kernels == [] and first.available_slots["cpu"]
    body = agent.spec()
    await agent.create(body)
    await wait_for(lambda: (manager.kernel(body["kernel_id"]) or {}).get("health") == "healthy", 20,
                   "a heartbeat with the healthy kernel")
    # level-triggered: every heartbeat has the full list, with host and port for the app proxy
    reported = manager.kernel(body["kernel_id"])
    assert reported is not None and reported["status"] == "running" and reported["host"] == "127.0.0.1"
    count = len(manager.heartbeats)
    await wait_for(lambda: len(manager.heartbeats) >= count + 2, 10, "periodic heartbeats")
    assert manager.kernel(body["kernel_id"]) is not None

    pgid = int(reported["handle"])
    manager.destroy = [body["kernel_id"]]
    await wait_for(lambda: (manager.kernel(body["kernel_id"]) or {}).get("status") == "terminated", 20,
                   "the kernel destroyed on the manager's request")
    assert not group_members(pgid)


async def test_transitions_are_sent_at_once(tmp_path: Path, fake_manager: FakeManager) -> None:
    """With a long heartbeat interval, a status change still reaches the manager right away."""
    config = make_config(tmp_path, {"agent": {"manager_url": fake_manager.url, "heartbeat_interval": 60}})
    async with running_agent(config, fake_manager) as harness:
        await wait_for(lambda: fake_manager.heartbeats, 10, "the first heartbeat")
        body = harness.spec(model_definition=definition("exit 5"))
        await harness.create(body)
        await wait_for(lambda: (fake_manager.kernel(body["kernel_id"]) or {}).get("status") == "failed", 10,
                       "the failure in a heartbeat long before the 60 s interval")
        assert len(fake_manager.heartbeats) <= 4  # starting + failed (+ coalesced), not a stream


async def test_never_healthy_replica_fails_by_the_deadline(agent: AgentHarness) -> None:
    health = {"path": "/health", "interval": 0.2, "max_retries": 2, "max_wait_time": 1.0, "initial_delay": 0.5}
    deadline = 0.5 + 0.2 * (2 + 1)
    body = agent.spec(model_definition=definition(health=health), environ={"HEALTH_STATUS": "500"})
    started = time.monotonic()
    await agent.create(body)
    k = await agent.wait_kernel(body["kernel_id"], lambda k: k["status"] in TERMINAL, timeout=deadline + 10)
    elapsed = time.monotonic() - started
    assert k["status"] == "failed" and k["health"] == "unhealthy"
    assert k["error"]["type"] == "health_check_failed" and "1.1s" in k["error"]["message"]
    assert deadline <= elapsed <= deadline + 2.5, elapsed
    await wait_for(lambda: not group_members(int(k["handle"])), 10, "the never-healthy replica to be stopped")


async def test_healthy_replica_goes_unhealthy_and_recovers(agent: AgentHarness) -> None:
    interval, retries = 0.2, 2
    health = {"path": "/health", "interval": interval, "max_retries": retries, "max_wait_time": 1.0,
              "initial_delay": 10.0}
    body = agent.spec(model_definition=definition(health=health))
    await agent.create(body)
    k = await agent.wait_healthy(body["kernel_id"])
    assert k["health"] == "healthy"
    flag = agent.kernel_dir(body["kernel_id"]) / "work" / "unhealthy"
    flag.write_text("1")
    started = time.monotonic()
    k = await agent.wait_kernel(body["kernel_id"], lambda k: k["health"] != "healthy", timeout=10)
    elapsed = time.monotonic() - started
    assert (k["status"], k["health"]) == ("running", "unhealthy")
    assert elapsed <= interval * (retries + 1) + 2.0, elapsed
    flag.unlink()
    k = await agent.wait_kernel(body["kernel_id"], lambda k: k["health"] == "healthy", timeout=10)
    assert k["status"] == "running"


async def test_without_health_check_the_open_port_means_healthy(agent: AgentHarness) -> None:
    body = agent.spec(model_definition=definition(health=False))  # type: ignore[arg-type]  # health=False: no check at all
    await agent.create(body)
    k = await agent.wait_healthy(body["kernel_id"])
    assert (k["status"], k["health"]) == ("running", "healthy")


@pytest.mark.parametrize("agent_overrides", [{"local": {"sandbox": "none"}}])
async def test_unsandboxed_mode_substitutes_the_model_folder(agent: AgentHarness, agent_overrides: Any) -> None:
    body = agent.spec(model_definition=definition("python3 {model_path}/replica_server.py $PORT"))
    await agent.create(body)
    k = await agent.wait_healthy(body["kernel_id"])
    assert k["status"] == "running", k
    _, info = await agent.replica_get(k["port"], "/info")
    folder = str((agent.storage_root / "tiny").resolve())
    assert info["env"]["BACKEND_MODEL_PATH"] == folder and info["env"]["MOORAGE_MODELS_DIR"] == folder
    assert info["cwd"] == folder
    assert info["env"]["HOME"] == str(agent.kernel_dir(body["kernel_id"]) / "work")


@pytest.mark.parametrize("sandbox", ["auto", "bwrap"])
async def test_without_a_working_sandbox_the_agent_refuses_to_start(tmp_path: Path, sandbox: str) -> None:
    """No silent fallback: without bubblewrap, "auto" (the old default) and "bwrap" both refuse, naming the
    way out; only an explicit sandbox = "none" runs replicas unsandboxed."""
    from agent.runtime.local import SandboxUnavailable

    config = make_config(tmp_path, {"local": {"sandbox": sandbox, "bwrap_path": "/nonexistent/bwrap"}})
    with pytest.raises(SandboxUnavailable, match='sandbox = "none"'):
        async with running_agent(config):
            pass


async def test_unsandboxed_mode_warns_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = make_config(tmp_path, {"local": {"sandbox": "none"}})
    with caplog.at_level(logging.WARNING):
        async with running_agent(config) as harness:
            assert harness.registry._runtime.describe() == "local (UNSANDBOXED)"
            assert harness.app[AGENT_KEY].info().runtime == "local-nosandbox"  # what the manager lists
            body = harness.spec()
            await harness.create(body)
            assert (await harness.wait_healthy(body["kernel_id"]))["status"] == "running"
    warnings = [r for r in caplog.records if "UNSANDBOXED" in r.getMessage()]
    assert len(warnings) == 1


async def test_agent_stop_leaves_replicas_running_and_persists_state(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_agent(config, destroy=False) as harness:
        body = harness.spec()
        await harness.create(body)
        k = await harness.wait_healthy(body["kernel_id"])
    pgid = int(k["handle"])
    try:
        async with aiohttp.ClientSession() as session:
            harness.session = session
            status, _ = await harness.replica_get(k["port"], "/health")
        assert status == 200, "the replica must survive the agent's shutdown"
        record = json.loads((harness.kernel_dir(body["kernel_id"]) / "kernel.json").read_text())
        assert record["report"]["status"] == "running" and record["report"]["port"] == k["port"]
        assert record["handle"]["info"]["pgid"] == pgid and record["spec"]["kernel_id"] == body["kernel_id"]

        # A new agent on the same state dir re-adopts it: same port (still reserved), same process, healthy;
        # creating the same id again returns the adopted replica instead of starting a second one.
        async with running_agent(config, destroy=False) as second:
            assert k["port"] in second.registry._ports.held
            again = await second.create(body)
            assert (again["port"], again["handle"]) == (k["port"], k["handle"])
            adopted = await second.wait_healthy(body["kernel_id"])
            assert adopted["status"] == "running" and adopted["handle"] == k["handle"]
            assert len((await second.rpc("GET", "/rpc/kernels"))["kernels"]) == 1
    finally:
        os.killpg(pgid, signal.SIGKILL)
    await wait_for(lambda: not group_members(pgid), 10, "cleanup")


async def test_destroy_all_for_embedded_shutdown(agent: AgentHarness) -> None:
    bodies = [agent.spec() for _ in range(2)]
    for body in bodies:
        await agent.create(body)
    kernels = [await agent.wait_healthy(b["kernel_id"]) for b in bodies]
    await agent.registry.destroy_all()
    for k in kernels:
        assert not group_members(int(k["handle"]))
        assert (await agent.get_kernel(k["kernel_id"]))["status"] == "terminated"


async def test_terminal_kernels_are_forgotten_after_the_retention(tmp_path: Path) -> None:
    config = make_config(tmp_path, {"agent": {"terminal_retention": 0.2}})
    async with running_agent(config) as harness:
        body = harness.spec(model_definition=definition("exit 1"))
        await harness.create(body)
        await harness.wait_kernel(body["kernel_id"], lambda k: k["status"] == "failed")
        await wait_for(lambda: not harness.kernel_dir(body["kernel_id"]).exists(), 10, "the kernel dir removed")
        assert await harness.get_kernel(body["kernel_id"]) is None


async def test_concurrent_creates_of_one_kernel_start_one_replica(agent: AgentHarness) -> None:
    body = agent.spec()
    reports = await asyncio.gather(*(agent.create(body) for _ in range(5)))
    assert len({(r["port"], r["handle"]) for r in reports}) == 1
    assert len((await agent.rpc("GET", "/rpc/kernels"))["kernels"]) == 1
