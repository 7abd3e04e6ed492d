"""End to end: autoscaling rules and scale from zero with manager, agent and app proxy as OS processes
(PostgreSQL, real etcd), driven by the `moorage` CLI (`service autoscale ...`) and real HTTP load.

The replicas run ``configs/models/echo`` (a control-plane test fixture, not a model). The app proxy runs with its
admin listener, so it registers in etcd and the manager reads its per-endpoint request rate.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import REPO, Cluster, chat, cluster_processes, http_request, moorage, moorage_json, wait_for
from tests.services import EtcdServer, free_port, wait_port

pytestmark = pytest.mark.e2e

COOLDOWN = 4  # seconds, both rules
HOLD_TIMEOUT = 12  # seconds the proxy holds a request for an endpoint without routes


@pytest.fixture
def cluster(tmp_path: Path, pg_url: str, etcd_server: EtcdServer):
    extra = {
        "MOORAGE_MANAGER__AUTOSCALE__EVALUATION_INTERVAL": "0.5",
        "MOORAGE_APPPROXY__PROXY__ADMIN_PORT": str(free_port()),
        "MOORAGE_APPPROXY__PROXY__SCRAPE_INTERVAL": "0.5",
        "MOORAGE_APPPROXY__PROXY__HOLD_TIMEOUT": str(HOLD_TIMEOUT),
        # cluster_processes writes the cluster secret there; the proxy signs-checks the manager's metric calls
        "MOORAGE_APPPROXY__SECRETS__CLUSTER_SECRET_FILE": str(tmp_path / "cluster_secret"),
    }
    with cluster_processes(tmp_path, pg_url, etcd_server, heartbeat_timeout=10.0, manager_env=extra) as processes:
        processes.agent_env("e2e-agent", MOORAGE_AGENT__AGENT__HEARTBEAT_INTERVAL="1")
        processes.start_agent("e2e-agent")
        wait_port("127.0.0.1", processes.agents["e2e-agent"]["port"], 30)
        env = processes.cli_env
        moorage(env, "folder", "create", "echo")
        moorage(env, "folder", "upload", "echo", str(REPO / "configs/models/echo"))
        yield processes


def _serving(info: dict[str, Any]) -> int:
    return sum(r["lifecycle"] == "running" and r["health"] == "healthy" and r["traffic"] == "active"
               for r in info["routes"])


def test_rules_scale_out_under_load_and_back_in(cluster: Cluster) -> None:
    env, logs = cluster.cli_env, cluster.daemons.logs
    moorage(env, "service", "create", "echo", "1", "--name", "auto-svc", "-r", "cpu=0.1", "-r", "mem=64m")
    info = wait_for(lambda: (i := cluster.info("auto-svc")) and _serving(i) == 1 and i, 60, "one healthy replica",
                    on_timeout=logs)
    url = info["service_endpoint"]
    token = moorage(env, "service", "token", "auto-svc", "--duration", "1h").stdout.strip()
    wait_for(lambda: chat(url, token)[0] == 200, 20, "the proxy serving", on_timeout=logs)
    out = moorage(env, "service", "autoscale", "add", "auto-svc", "--source", "proxy", "--metric", "rps",
                  "--comparator", "greater_than", "--threshold", "4", "--step", "1", "--max", "3",
                  "--cooldown", str(COOLDOWN)).stdout
    assert "proxy:rps > 4" in out
    moorage(env, "service", "autoscale", "add", "auto-svc", "--source", "proxy", "--metric", "rps",
            "--comparator", "less_than", "--threshold", "1", "--step", "-1", "--min", "1", "--cooldown",
            str(COOLDOWN))
    rules = moorage_json(env, "service", "autoscale", "list", "auto-svc")
    assert sorted(r["step_size"] for r in rules) == [-1, 1] and all(r["enabled"] for r in rules)
    time.sleep(2)
    assert cluster.info("auto-svc")["replicas"] == 1  # a few requests a second: below the threshold

    failures: list[tuple[int, bytes]] = []
    sent = 0
    done = threading.Event()

    def load() -> None:
        nonlocal sent
        while not done.is_set():
            try:
                status, body = chat(url, token, "load")
            except OSError as exc:
                status, body = 0, str(exc).encode()
            sent += 1
            if status != 200:
                failures.append((status, body[:200]))
            time.sleep(0.01)

    threads = [threading.Thread(target=load) for _ in range(3)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: _serving(cluster.info("auto-svc")) >= 2, 60, "a second serving replica", on_timeout=logs)
        scale_up = time.monotonic() - started
        wait_for(lambda: (i := cluster.info("auto-svc")) and _serving(i) == 3 and i["replicas"] == 3, 90,
                 "three serving replicas (max)", on_timeout=logs)
        to_max = time.monotonic() - started
        time.sleep(COOLDOWN + 1.5)
        assert cluster.info("auto-svc")["replicas"] == 3  # clamped at max_replicas, load or not
    finally:
        done.set()
        for thread in threads:
            thread.join()
    stopped = time.monotonic()
    print(f"\nMEASURE time-to-scale-up: {scale_up:.2f}s (load start → a 2nd replica serving; 1 → 3 replicas "
          f"serving in {to_max:.2f}s; {sent} requests)")
    assert sent > 50 and failures == [], f"{len(failures)} of {sent} requests failed: {failures[:3]}"

    wait_for(lambda: _serving(cluster.info("auto-svc")) < 3, 60, "a replica to leave", on_timeout=logs)
    scale_down = time.monotonic() - stopped
    wait_for(lambda: (i := cluster.info("auto-svc")) and i["replicas"] == 1 and _serving(i) == 1, 60,
             "back to one replica", on_timeout=logs)
    to_min = time.monotonic() - stopped
    print(f"MEASURE time-to-scale-down: {scale_down:.2f}s (load stop → a replica out of traffic; 3 → 1 "
          f"in {to_min:.2f}s, cooldown {COOLDOWN}s)")
    time.sleep(COOLDOWN + 1)
    assert cluster.info("auto-svc")["replicas"] == 1  # min_replicas holds

    applied = moorage_json(env, "service", "autoscale", "decisions", "auto-svc", "--applied-only")
    steps = [(d["old_replicas"], d["new_replicas"]) for d in reversed(applied)]
    assert steps == [(1, 2), (2, 3), (3, 2), (2, 1)], steps
    stamps = [datetime.fromisoformat(d["created_at"]) for d in reversed(applied)]
    gaps = [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:], strict=False)]
    assert all(g >= COOLDOWN - 0.05 for g in gaps), f"decisions closer than the cooldown: {gaps}"
    assert all(d["metric_source"] == "proxy" and d["observed"] is not None for d in applied)
    text = moorage(env, "service", "autoscale", "decisions", "auto-svc").stdout
    assert "scale" in text and "1 → 2" in text


def test_scale_from_zero_holds_the_first_request(cluster: Cluster) -> None:
    env, logs = cluster.cli_env, cluster.daemons.logs
    created = moorage_json(env, "service", "create", "echo", "0", "--name", "cold-svc", "-r", "cpu=0.1",
                           "-r", "mem=64m")
    endpoint_id = created["endpoint_id"]
    moorage(env, "service", "autoscale", "add", "cold-svc", "--source", "proxy", "--metric", "rps",
            "--comparator", "less_than", "--threshold", "0.05", "--step", "-1", "--min", "0", "--max", "2",
            "--cooldown", "3")
    url = cluster.info("cold-svc")["service_endpoint"]
    token = moorage(env, "service", "token", "cold-svc", "--duration", "1h").stdout.strip()
    wait_for(lambda: cluster.route_table(endpoint_id) is not None, 20, "the (empty) route table", on_timeout=logs)
    port = int(url.rsplit(":", 1)[1])
    wait_port("127.0.0.1", port, 20)
    assert cluster.info("cold-svc")["replicas"] == 0

    started = time.monotonic()
    status, body = chat(url, token, "wake up")  # held by the proxy until the replica is up, then served
    cold_start = time.monotonic() - started
    assert status == 200 and b"echo: wake up" in body, (status, body[:300])
    print(f"\nMEASURE cold start through proxy: {cold_start:.2f}s (0 replicas → first response)")
    assert cold_start < HOLD_TIMEOUT
    decisions = moorage_json(env, "service", "autoscale", "decisions", "cold-svc")
    woke = [d for d in decisions if d["outcome"] == "scale_from_zero"]
    assert len(woke) == 1 and woke[0]["old_replicas"] == 0 and woke[0]["new_replicas"] == 1
    assert cluster.info("cold-svc")["replicas"] == 1

    # idle: the ordinary rule (rps < 0.05, min 0) takes it back to zero after its cooldown
    wait_for(lambda: (i := cluster.info("cold-svc")) and i["replicas"] == 0 and _serving(i) == 0, 60,
             "idle scale-down to zero", on_timeout=logs)
    # and the next request wakes it again
    status, _ = chat(url, token, "again")
    assert status == 200

    # an endpoint at zero without any rule stays there: nothing would wake it, so 503 + Retry-After at once
    moorage(env, "service", "create", "echo", "0", "--name", "norule-svc", "-r", "cpu=0.1", "-r", "mem=64m")
    other = moorage_json(env, "service", "info", "norule-svc")
    other_token = moorage(env, "service", "token", "norule-svc", "--duration", "1h").stdout.strip()
    wait_for(lambda: cluster.route_table(other["endpoint_id"]) is not None, 20, "the route table", on_timeout=logs)
    wait_port("127.0.0.1", int(other["service_endpoint"].rsplit(":", 1)[1]), 20)
    started = time.monotonic()
    status, headers, raw = http_request(other["service_endpoint"] + "/v1/models", token=other_token,
                                        timeout=HOLD_TIMEOUT + 20)
    waited = time.monotonic() - started
    assert status == 503 and "Retry-After" in headers, (status, headers, raw[:300])
    assert b"no-route-available" in raw and waited < 3, waited
    assert cluster.info("norule-svc")["replicas"] == 0
