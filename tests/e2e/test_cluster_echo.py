"""End to end: manager, agent and app proxy as three OS processes, with PostgreSQL and a real etcd.

The replicas run ``configs/models/echo`` (a control-plane test fixture, not a model) through the `local`
runtime. Driven by the real `moorage` CLI.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.harness import (
    REPO,
    chat,
    cluster_processes,
    moorage,
    moorage_json,
    pids_matching,
    wait_for,
)
from tests.services import EtcdServer, wait_port

pytestmark = pytest.mark.e2e


def _healthy_routes(info: dict) -> list[dict]:
    return [r for r in info["routes"] if r["lifecycle"] == "running" and r["health"] == "healthy"]


@pytest.fixture
def cluster(tmp_path: Path, pg_url: str, etcd_server: EtcdServer):
    with cluster_processes(tmp_path, pg_url, etcd_server, heartbeat_timeout=10.0) as processes:
        processes.agent_env("e2e-agent", MOORAGE_AGENT__AGENT__HEARTBEAT_INTERVAL="1")
        processes.start_agent("e2e-agent")
        wait_port("127.0.0.1", processes.agents["e2e-agent"]["port"], 30)
        yield {"env": processes.cli_env, "daemons": processes.daemons, "tmp": tmp_path}


def test_echo_service_through_three_processes(cluster: dict) -> None:
    env, daemons = cluster["env"], cluster["daemons"]
    logs = daemons.logs
    moorage(env, "folder", "create", "echo")
    moorage(env, "folder", "upload", "echo", str(REPO / "configs/models/echo"))
    moorage(env, "service", "create", "echo", "2", "--name", "echo-svc", "-r", "cpu=0.25", "-r", "mem=64m")
    moorage(env, "service", "create", "echo", "1", "--name", "echo-two", "-r", "cpu=0.25", "-r", "mem=64m")

    def info(name: str) -> dict:
        return moorage_json(env, "service", "info", name)

    svc = wait_for(lambda: (i := info("echo-svc")) and len(_healthy_routes(i)) == 2 and i, 90,
                   "two healthy replicas", on_timeout=logs)
    assert svc["status"] == "HEALTHY"
    url = svc["service_endpoint"]
    ports = {r["port"] for r in _healthy_routes(svc)}
    assert len(ports) == 2, "two replicas of one endpoint on one agent need two ports"
    wait_for(lambda: info("echo-two")["status"] == "HEALTHY", 60, "echo-two healthy", on_timeout=logs)
    listed = {s["name"]: s for s in moorage_json(env, "service", "list")}  # the compact list agrees with info
    assert (listed["echo-svc"]["active_route_count"], listed["echo-svc"]["status"]) == (2, "HEALTHY"), listed
    assert (listed["echo-two"]["active_route_count"], listed["echo-two"]["status"]) == (1, "HEALTHY"), listed

    token = moorage(env, "service", "token", "echo-svc", "--duration", "1h").stdout.strip()
    other_token = moorage(env, "service", "token", "echo-two", "--duration", "1h").stdout.strip()
    short_token = moorage(env, "service", "token", "echo-svc", "--duration", "2").stdout.strip()
    assert token.count(".") == 2 and "\n" not in token

    status, body = wait_for(lambda: (r := chat(url, token)) and r[0] == 200 and r, 20, "the proxy serving",
                            on_timeout=logs)
    assert b"echo: hello" in body
    assert chat(url, None)[0] == 401
    assert chat(url, other_token)[0] == 401
    time.sleep(3)
    assert chat(url, short_token)[0] == 401  # expired

    # Revocation reaches the proxy within a second.
    doomed = moorage(env, "service", "token", "echo-svc", "--duration", "1h").stdout.strip()
    assert chat(url, doomed)[0] == 200
    moorage(env, "service", "revoke-token", "echo-svc", doomed)
    revoked_at = time.monotonic()
    wait_for(lambda: chat(url, doomed)[0] == 401, 1.0, "the revoked token to be refused", interval=0.05)
    assert time.monotonic() - revoked_at <= 1.0
    assert chat(url, token)[0] == 200
    states = {t["token_id"]: t for t in moorage_json(env, "service", "tokens", "echo-svc")}
    assert sum(t["revoked"] for t in states.values()) == 1

    # SIGKILL one replica process under steady traffic: every request keeps succeeding while it is replaced.
    victim_port = sorted(ports)[0]
    victims = pids_matching(f"echo_server.py --port {victim_port}")
    assert victims, f"no replica process on port {victim_port}"
    failures: list[tuple[int, bytes]] = []
    done = threading.Event()
    sent = 0

    def load() -> None:
        nonlocal sent
        while not done.is_set():
            status, body = chat(url, token, "under load")
            sent += 1
            if status != 200:
                failures.append((status, body[:200]))
            time.sleep(0.02)

    loader = threading.Thread(target=load)
    loader.start()
    try:
        time.sleep(0.5)
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        replaced = wait_for(
            lambda: (i := info("echo-svc")) and len(_healthy_routes(i)) == 2
            and victim_port not in {r["port"] for r in _healthy_routes(i)} and i, 60,
            "a replacement replica", on_timeout=logs)
        time.sleep(1.0)
    finally:
        done.set()
        loader.join()
    assert sent > 20
    assert failures == [], f"{len(failures)} of {sent} requests failed: {failures[:3]}"
    assert replaced["status"] == "HEALTHY"

    # A start command that exits: the route fails to start, and `service info` shows the stderr tail.
    moorage(env, "service", "create", "echo", "1", "--name", "echo-bad", "-r", "cpu=0.1", "-r", "mem=32m",
            "-e", "ECHO_FAIL_ON_START=deliberate failure for the test")
    failed = wait_for(lambda: [r for r in info("echo-bad")["routes"] if r["lifecycle"] == "failed_to_start"]
                      or [r for r in moorage_json(env, "service", "info", "echo-bad").get("routes", [])
                          if r["lifecycle"] == "failed_to_start"], 60, "a failed_to_start route", on_timeout=logs)
    assert "deliberate failure for the test" in failed[0]["error_data"]["stderr_tail"]
    text = moorage(env, "service", "info", "echo-bad").stdout
    assert "deliberate failure for the test" in text and "failed_to_start" in text

    # rm: the URL stops answering and the replica processes are gone.
    moorage(env, "service", "rm", "echo-svc")

    def url_closed() -> bool:
        try:
            chat(url, token)
        except OSError:
            return True
        return False

    wait_for(url_closed, 30, "the endpoint URL to stop answering", on_timeout=logs)
    live_ports = {r["port"] for r in replaced["routes"]}
    wait_for(lambda: not any(pids_matching(f"echo_server.py --port {p}") for p in live_ports), 30,
             "the replica processes to exit", on_timeout=logs)
    assert moorage(env, "service", "info", "echo-svc", check=False).returncode == 1
    listed = moorage_json(env, "service", "list")
    assert "echo-svc" not in {s["name"] for s in listed}
