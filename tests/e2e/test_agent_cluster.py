"""Agent end to end, with manager + agent(s) + app proxy as processes on PostgreSQL and a real etcd.

* docker runtime: a 2-replica echo service in containers of a private dockerd, served through the proxy;
  ``service rm`` leaves no container behind.
* agent death: SIGKILL the only agent → its routes leave the route table (traffic) after the manager's
  heartbeat timeout (measured); restarted, it re-adopts the replicas and the service ends with exactly the
  desired number of replicas (no duplicate).
* two hosts: two agents in two network namespaces joined to the host by veth pairs (10.231.x.y), replicas
  placed on both and served through one proxy; killing one agent moves its replicas to the other.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent.dockerd import IMAGE, Dockerd, rootfs_tarball, running_dockerd
from tests.e2e.harness import (
    REPO,
    Cluster,
    chat,
    cluster_processes,
    http_request,
    moorage,
    netns_hosts,
    pids_matching,
    replica_pids,
    wait_for,
)
from tests.services import EtcdServer

pytestmark = pytest.mark.e2e


def _healthy(info: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in info["routes"] if r["lifecycle"] == "running" and r["health"] == "healthy"]


def _upload_echo(cluster: Cluster) -> None:
    moorage(cluster.cli_env, "folder", "create", "echo")
    moorage(cluster.cli_env, "folder", "upload", "echo", str(REPO / "configs/models/echo"))


@pytest.fixture(scope="module")
def dockerd_e2e() -> Iterator[Dockerd]:
    with running_dockerd() as daemon:
        yield daemon


def test_agent_docker_runtime_service_through_the_proxy(tmp_path: Path, pg_url: str, etcd_server: EtcdServer,
                                                        dockerd_e2e: Dockerd) -> None:
    with cluster_processes(tmp_path, pg_url, etcd_server) as cluster:
        cluster.agent_env("docker-agent", MOORAGE_AGENT__AGENT__RUNTIME="docker",
                          MOORAGE_AGENT__DOCKER__SOCKET=dockerd_e2e.socket, MOORAGE_AGENT__DOCKER__PULL="never",
                          MOORAGE_AGENT__DOCKER__SHM_SIZE="64m")
        cluster.start_agent("docker-agent")
        logs = cluster.daemons.logs
        _upload_echo(cluster)
        t0 = time.monotonic()
        moorage(cluster.cli_env, "service", "create", "echo", "2", "--name", "echo-docker", "--image", IMAGE,
                "-r", "cpu=0.5", "-r", "mem=128m")
        svc = wait_for(lambda: (i := cluster.info("echo-docker")) and len(_healthy(i)) == 2 and i, 180,
                       "two healthy container replicas", on_timeout=logs)
        print(f"\nMEASURE docker e2e: service create → 2 healthy container replicas in {time.monotonic() - t0:.1f}s")
        containers = dockerd_e2e.containers(all_=False)
        assert len(containers) == 2, containers
        token = moorage(cluster.cli_env, "service", "token", "echo-docker", "--duration", "1h").stdout.strip()
        url = svc["service_endpoint"]
        status, body = wait_for(lambda: (r := chat(url, token)) and r[0] == 200 and r, 30, "the proxy serving",
                                on_timeout=logs)
        assert b"echo: hello" in body
        seen = set()
        for _ in range(20):
            status, _, raw = http_request(url + "/", token=token)
            if status == 200:
                seen.add(json.loads(raw).get("port"))
        assert len(seen) == 2, f"both container replicas should serve: {seen}"
        moorage(cluster.cli_env, "service", "rm", "echo-docker")
        wait_for(lambda: dockerd_e2e.containers() == [], 60, "no container left after rm", on_timeout=logs)


def test_agent_sigkill_routes_leave_traffic_then_readoption_without_duplicates(
        tmp_path: Path, pg_url: str, etcd_server: EtcdServer) -> None:
    with cluster_processes(tmp_path, pg_url, etcd_server, heartbeat_timeout=3.0) as cluster:
        cluster.agent_env("solo")
        cluster.start_agent("solo")
        logs = cluster.daemons.logs
        _upload_echo(cluster)
        moorage(cluster.cli_env, "service", "create", "echo", "2", "--name", "echo-solo", "-r", "cpu=0.25",
                "-r", "mem=64m")
        svc = wait_for(lambda: (i := cluster.info("echo-solo")) and len(_healthy(i)) == 2 and i, 90,
                       "two healthy replicas", on_timeout=logs)
        endpoint_id = svc["endpoint_id"]
        wait_for(lambda: len((cluster.route_table(endpoint_id) or {}).get("routes", [])) == 2, 30,
                 "two routes published", on_timeout=logs)
        ports = {r["port"] for r in _healthy(svc)}

        cluster.kill_agent("solo")
        t_dead = time.monotonic()
        wait_for(lambda: (t := cluster.route_table(endpoint_id)) is not None and not t["routes"], 30,
                 "the dead agent's routes to leave the route table", interval=0.05, on_timeout=logs)
        out_of_traffic = time.monotonic() - t_dead
        print(f"\nMEASURE agent SIGKILL → its routes out of traffic in {out_of_traffic:.2f}s "
              "(manager heartbeat timeout 3s, agent heartbeat every 0.5s)")
        assert out_of_traffic < 3.0 + 5.0
        # The replicas themselves kept running while their agent was dead.
        assert all(pids_matching(f"echo_server.py --port {p}") for p in ports)

        cluster.start_agent("solo", name="solo-restarted")
        wait_for(lambda: (i := cluster.info("echo-solo")) and len(_healthy(i)) == 2 and i, 90,
                 "two healthy replicas again", on_timeout=logs)
        wait_for(lambda: len((cluster.route_table(endpoint_id) or {}).get("routes", [])) == 2, 30,
                 "two routes published again", on_timeout=logs)

        def settled() -> bool:
            live = replica_pids("echo_server.py --port", cluster.storage)
            return len(live) == 2

        wait_for(settled, 60, "exactly two replica processes (no duplicate, no orphan)", on_timeout=logs)
        time.sleep(2.0)
        assert len(replica_pids("echo_server.py --port", cluster.storage)) == 2, "no duplicate replica afterwards"
        final = cluster.info("echo-solo")
        assert len(_healthy(final)) == 2
        kept = ports & {r["port"] for r in _healthy(final)}
        print(f"MEASURE after the restart {len(kept)} of 2 original replicas serve again (re-adopted), "
              f"{2 - len(kept)} were replaced by the manager while the agent was lost")


# ---------------------------------------------------------------------------------------------------------
# Two hosts in two network namespaces
# ---------------------------------------------------------------------------------------------------------

def test_agent_two_hosts_in_network_namespaces_served_through_one_proxy(
        tmp_path: Path, pg_url: str, etcd_server: EtcdServer) -> None:
    with netns_hosts(2) as hosts, cluster_processes(tmp_path, pg_url, etcd_server, manager_host="0.0.0.0",
                                                    heartbeat_timeout=3.0) as cluster:
        names = []
        for i, h in enumerate(hosts):
            name = f"host-{i}"
            cluster.agent_env(name, listen_host=h["ns_ip"], replica_host=h["ns_ip"], manager_host=h["host_ip"])
            cluster.start_agent(name, prefix=["ip", "netns", "exec", h["ns"]])
            names.append(name)
        logs = cluster.daemons.logs
        cluster.wait_agents_alive(names)  # else all four replicas may land on whichever agent registered first
        _upload_echo(cluster)
        # ECHO_HOST: the replica listens on the namespace's address so the proxy (on the host) reaches it.
        moorage(cluster.cli_env, "service", "create", "echo", "4", "--name", "echo-two-hosts", "-r", "cpu=0.1",
                "-r", "mem=32m", "-e", "ECHO_HOST=0.0.0.0")
        svc = wait_for(lambda: (i := cluster.info("echo-two-hosts")) and len(_healthy(i)) == 4 and i, 120,
                       "four healthy replicas", on_timeout=logs)
        hosts_used = {r.get("host") for r in _healthy(svc)} | {
            r["host"] for r in (cluster.route_table(svc["endpoint_id"]) or {}).get("routes", [])}
        assert {h["ns_ip"] for h in hosts} <= hosts_used, f"replicas should be on both hosts: {hosts_used}"
        token = moorage(cluster.cli_env, "service", "token", "echo-two-hosts", "--duration", "1h").stdout.strip()
        url = svc["service_endpoint"]
        wait_for(lambda: chat(url, token)[0] == 200, 30, "the proxy serving", on_timeout=logs)
        seen = set()
        for _ in range(40):
            status, _, raw = http_request(url + "/", token=token)
            assert status == 200
            seen.add(json.loads(raw).get("port"))
        assert len(seen) >= 2, f"the proxy should balance over the replicas: {seen}"

        # One host dies: its routes leave traffic and replacements are placed on the other host.
        cluster.kill_agent(names[0])
        t_dead = time.monotonic()
        dead_ip = hosts[0]["ns_ip"]
        wait_for(lambda: (t := cluster.route_table(svc["endpoint_id"])) is not None
                 and all(r["host"] != dead_ip for r in t["routes"]), 30, "routes of the dead host out of traffic",
                 interval=0.05, on_timeout=logs)
        print(f"MEASURE two hosts: agent death → its routes out of traffic in {time.monotonic() - t_dead:.2f}s")
        wait_for(lambda: (t := cluster.route_table(svc["endpoint_id"])) is not None and len(t["routes"]) == 4
                 and all(r["host"] == hosts[1]["ns_ip"] for r in t["routes"]), 90,
                 "replacements on the surviving host", on_timeout=logs)
        assert chat(url, token)[0] == 200
        moorage(cluster.cli_env, "service", "rm", "echo-two-hosts")


def test_cmd_variant_runs_the_images_own_command(tmp_path: Path, pg_url: str, etcd_server: EtcdServer,
                                                 dockerd_e2e: Dockerd) -> None:
    """`--runtime-variant cmd` with no model-definition.yaml: the replica runs the image's CMD (here an image
    whose CMD is the echo server from the model folder), which reads the port from $PORT."""
    image = "moorage-test-echo-cmd:latest"
    env_change = "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8"
    dockerd_e2e.cli("import", "--change", env_change, "--change", 'CMD ["python3", "/models/echo_server.py"]',
                    str(rootfs_tarball()), image, timeout=600)
    with cluster_processes(tmp_path, pg_url, etcd_server) as cluster:
        cluster.agent_env("docker-agent", MOORAGE_AGENT__AGENT__RUNTIME="docker",
                          MOORAGE_AGENT__DOCKER__SOCKET=dockerd_e2e.socket, MOORAGE_AGENT__DOCKER__PULL="never",
                          MOORAGE_AGENT__DOCKER__SHM_SIZE="64m")
        cluster.start_agent("docker-agent")
        logs = cluster.daemons.logs
        moorage(cluster.cli_env, "folder", "create", "bare")
        moorage(cluster.cli_env, "folder", "upload", "bare", str(REPO / "configs/models/echo/echo_server.py"))
        moorage(cluster.cli_env, "service", "create", "bare", "1", "--name", "echo-cmd", "--image", image,
                "--runtime-variant", "cmd", "-r", "cpu=0.5", "-r", "mem=128m")
        svc = wait_for(lambda: (i := cluster.info("echo-cmd")) and len(_healthy(i)) == 1 and i, 180,
                       "the cmd-variant replica to become healthy", on_timeout=logs)
        assert svc["runtime_variant"] == "cmd" and svc["model_definition_path"] is None
        token = moorage(cluster.cli_env, "service", "token", "echo-cmd", "--duration", "1h").stdout.strip()
        status, body = wait_for(lambda: (r := chat(svc["service_endpoint"], token)) and r[0] == 200 and r, 30,
                                "the proxy serving the cmd-variant replica", on_timeout=logs)
        assert b"echo: hello" in body
        moorage(cluster.cli_env, "service", "rm", "echo-cmd")
        wait_for(lambda: dockerd_e2e.containers() == [], 60, "no container left after rm", on_timeout=logs)
