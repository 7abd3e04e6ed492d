"""End to end: two managers on one PostgreSQL and one etcd, one agent, one app proxy, all as processes.

Only the leader runs the control loops. The agent heartbeats to the follower and every API call goes to the
follower, so wake-ups must travel follower → etcd → leader. Then the leader is killed with SIGKILL: the follower
takes over within the lease TTL and a scale request sent to it takes effect.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.e2e.harness import REPO, cluster_processes, moorage, moorage_json, wait_for
from tests.services import EtcdServer, wait_port

pytestmark = pytest.mark.e2e

TTL = 3  # seconds (manager leader.ttl); the default is 5
# Long enough that only a wake-up, never the periodic tick, explains a change acting within a second or two.
TICK = 10


def _healthy(info: dict) -> int:
    return sum(1 for r in info["routes"] if r["lifecycle"] == "running" and r["health"] == "healthy")


def test_leader_failover(tmp_path: Path, pg_url: str, etcd_server: EtcdServer) -> None:
    manager_env = {"MOORAGE_MANAGER__LEADER__TTL": str(TTL), "MOORAGE_MANAGER__LEADER__STEP_DOWN_MARGIN": "0.75",
                   "MOORAGE_MANAGER__RECONCILE__INTERVAL": str(TICK)}
    with cluster_processes(tmp_path, pg_url, etcd_server, heartbeat_timeout=10.0,
                           manager_env=manager_env) as cluster:
        logs = cluster.daemons.logs
        first = wait_for(lambda: (c := cluster.leader_claim()) and c["url"] == cluster.manager_url and c, 30,
                         "the first manager to lead", on_timeout=logs)
        url_b = cluster.start_manager("manager-b")
        env_b = {**cluster.cli_env, "MOORAGE_ENDPOINT": url_b}
        cluster.agent_env("e2e-agent", MOORAGE_AGENT__AGENT__MANAGER_URL=url_b)  # heartbeats land on the follower
        cluster.start_agent("e2e-agent")
        wait_port("127.0.0.1", cluster.agents["e2e-agent"]["port"], 30)

        def info(name: str) -> dict:
            return moorage_json(env_b, "service", "info", name)

        moorage(env_b, "folder", "create", "echo")
        moorage(env_b, "folder", "upload", "echo", str(REPO / "configs/models/echo"))
        moorage(env_b, "service", "create", "echo", "1", "--name", "ha-svc", "-r", "cpu=0.25", "-r", "mem=64m")
        wait_for(lambda: _healthy(info("ha-svc")) == 1, 60, "one healthy replica", on_timeout=logs)
        assert cluster.leader_claim() == first, "the leader changed while both managers were up"

        # A scale request on the follower wakes the leader's loop at once (not at its next tick).
        moorage(env_b, "service", "scale", "ha-svc", "2")
        asked = time.monotonic()
        wait_for(lambda: len(info("ha-svc")["routes"]) == 2, TICK / 2, "the leader to plan the second replica",
                 interval=0.1, on_timeout=logs)
        relayed = time.monotonic() - asked
        wait_for(lambda: _healthy(info("ha-svc")) == 2, 60, "two healthy replicas", on_timeout=logs)

        # SIGKILL the leader: its lease is not revoked, so the follower waits for it to expire, then leads.
        proc = cluster.daemons.procs["manager"]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        killed = time.monotonic()
        wait_for(lambda: (c := cluster.leader_claim()) and c["url"] == url_b, TTL + 10,
                 "the surviving manager to lead", interval=0.05, on_timeout=logs)
        failover = time.monotonic() - killed

        moorage(env_b, "service", "scale", "ha-svc", "3")
        svc = wait_for(lambda: (i := info("ha-svc")) and _healthy(i) == 3 and i, 60, "three healthy replicas",
                       on_timeout=logs)
        serving = time.monotonic() - killed
        table = wait_for(lambda: (t := cluster.route_table(svc["endpoint_id"])) and len(t["routes"]) == 3 and t,
                         10, "the new leader to publish three routes", on_timeout=logs)
        assert {r["port"] for r in table["routes"]} == {r["port"] for r in svc["routes"]}

        print(f"\nMEASURE leader failover: SIGKILL → the other manager leads in {failover:.2f}s (ttl {TTL}s); "
              f"→ scaled to 3 healthy replicas in {serving:.2f}s; follower → leader wake-up: scale planned in "
              f"{relayed:.2f}s (tick {TICK}s)")
        assert failover <= TTL + 1.5, f"failover took {failover:.2f}s with a {TTL}s lease"
        assert relayed < TICK / 2
