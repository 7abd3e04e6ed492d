"""A replica is untrusted code: a hostile model folder, run by a real `moorage up` whose data dir lies outside
/tmp (as the default ~/.local/share/moorage does), tries to read Moorage's secrets and the host's, and to
reach the manager, the agent, another user's replica, PostgreSQL and Redis. It must get nothing
(docs/security.md, "Replica sandbox" and "Replica network")."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import uuid
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.agent.dockerd import IMAGE, running_dockerd
from tests.e2e.harness import (
    PYTHON,
    REPO,
    Daemons,
    cluster_processes,
    free_port_block,
    http_request,
    moorage,
    moorage_json,
    wait_for,
)
from tests.services import EtcdServer, free_port, wait_port

pytestmark = pytest.mark.e2e

HOSTILE = Path(__file__).parent / "hostile_model"


def _host_address() -> str | None:
    """A non-loopback address of this host (what a replica on the host network could use to reach services
    bound to all interfaces)."""
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    return next((a for a in out if ":" not in a and not a.startswith("127.")), None)


def _route_port(env: dict[str, str], service: str) -> int:
    info = moorage_json(env, "service", "info", service)
    return next(r["port"] for r in info["routes"] if r.get("port"))


def probe(replica: str, reads: list[str], targets: list[str], lists: list[str]) -> dict:
    """Ask the hostile replica at ``host:port`` (reached from the host, as the proxy does) what it got."""
    query = urlencode([*(("read", p) for p in reads), *(("connect", t) for t in targets),
                       *(("list", p) for p in lists)], doseq=True)
    status, _, body = http_request(f"http://{replica}/probe?{query}", timeout=60)
    assert status == 200, body
    got = json.loads(body)
    assert got["uid"] != 0 and got["gid"] != 0 and 0 not in got["groups"], got
    for path in reads:
        assert not got["read"][path].startswith("READ"), (path, got["read"][path])
    for target in targets:
        assert got["connect"][target] != "CONNECTED", (target, got["connect"])
    return got


def _listening_ports(pid: int) -> set[int]:
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if f"pid={pid}," in line}


@pytest.fixture
def data_dir() -> Path:
    path = Path.home() / ".local" / "share" / f"moorage-sectest-{uuid.uuid4().hex[:8]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_hostile_replica_reads_and_reaches_nothing(tmp_path: Path, data_dir: Path) -> None:
    port = free_port()
    proxy_base = free_port_block(4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
    env["MOORAGE_DATA_DIR"] = str(data_dir)
    daemons = Daemons(tmp_path)
    up = daemons.start("up", [PYTHON, "-m", "manager.cli.main", "up", "--port", str(port),
                              "--console-port", str(free_port()), "--proxy-ports",
                         f"{proxy_base}-{proxy_base + 3}"], env)
    try:
        wait_port("127.0.0.1", port, 60)
        wait_for(lambda: (data_dir / "cluster.json").exists(), 30, "cluster.json", on_timeout=daemons.logs)
        for name, source in (("hostile", HOSTILE), ("victim", REPO / "configs/models/echo")):
            moorage(env, "folder", "create", name)
            moorage(env, "folder", "upload", name, str(source))
            moorage(env, "service", "create", name, "1", "--name", name, "-r", "cpu=0.25", "-r", "mem=64m")
        for name in ("hostile", "victim"):
            wait_for(lambda n=name: moorage_json(env, "service", "info", n)["status"] == "HEALTHY", 90,
                     f"{name} healthy", on_timeout=daemons.logs)
        hostile_port, victim_port = _route_port(env, "hostile"), _route_port(env, "victim")
        own_ports = _listening_ports(up.pid)  # manager, agent RPC and app proxy listeners
        assert port in own_ports and len(own_ports) >= 3, own_ports
        victim_file = next((data_dir / "storage").rglob("echo_server.py"))

        secrets = [str(data_dir / n) for n in ("cluster.json", "secrets.json", "moorage.db", "moorage.log")]
        reads = [*secrets, str(victim_file), "/etc/shadow", "/etc/gshadow", "/root/.bash_history"]
        targets = [*(f"127.0.0.1:{p}" for p in own_ports), f"127.0.0.1:{victim_port}", "127.0.0.1:5432",
                   "127.0.0.1:6379"]
        host_ip = _host_address()
        if host_ip:
            targets += [f"{host_ip}:{port}", f"{host_ip}:5432", f"{host_ip}:{victim_port}"]
        # The test (on the host) reaches the replica's port: the forwarder works for the proxy and probes.
        got = probe(f"127.0.0.1:{hostile_port}", reads, targets,
                    ["/", str(data_dir), str(data_dir / "storage"), "/home", "/etc/ssh"])
        for path in (str(data_dir), str(data_dir / "storage")):
            assert got["list"][path].startswith("denied"), (path, got["list"][path])
        assert got["list"]["/home"] == ["work"] and got["list"]["/etc/ssh"] == []
        root = set(got["list"]["/"])
        assert {"usr", "etc", "models", "proc", "tmp"} <= root and "var" not in root and "srv" not in root, root

        # The victim itself is still reachable from the host side, and replicas run with a uid of their own.
        assert http_request(f"http://127.0.0.1:{victim_port}/health")[0] == 200
        with socket.create_connection(("127.0.0.1", hostile_port), timeout=2):
            pass
    finally:
        daemons.stop_all()
    # `moorage up` stops its replicas when it stops, and the control loop does not replace them meanwhile
    left = subprocess.run(["pgrep", "-f", f"{data_dir}/agent/kernels"], capture_output=True, text=True).stdout
    assert not left.split(), f"replicas left running: {left}"


def test_hostile_replica_in_a_cluster_docker_agent_reaches_nothing(tmp_path: Path, pg_url: str,
                                                                   etcd_server: EtcdServer) -> None:
    """The same hostile folder on a cluster-mode agent with the Docker runtime (PostgreSQL, etcd, daemons as
    processes): no host path but its own, its own uid, and no way to the manager, the agent, etcd,
    PostgreSQL, Redis or the other service's container."""
    with running_dockerd() as dockerd, cluster_processes(tmp_path, pg_url, etcd_server) as cluster:
        env = cluster.agent_env("docker-agent", MOORAGE_AGENT__AGENT__RUNTIME="docker",
                                MOORAGE_AGENT__DOCKER__SOCKET=dockerd.socket, MOORAGE_AGENT__DOCKER__PULL="never",
                                MOORAGE_AGENT__DOCKER__SHM_SIZE="64m")
        cluster.start_agent("docker-agent")
        for name, source in (("hostile", HOSTILE), ("victim", REPO / "configs/models/echo")):
            moorage(cluster.cli_env, "folder", "create", name)
            moorage(cluster.cli_env, "folder", "upload", name, str(source))
            moorage(cluster.cli_env, "service", "create", name, "1", "--name", name, "--image", IMAGE,
                    "-r", "cpu=0.25", "-r", "mem=64m")
        for name in ("hostile", "victim"):
            wait_for(lambda n=name: cluster.info(n)["status"] == "HEALTHY", 180, f"{name} healthy",
                     on_timeout=cluster.daemons.logs)
        routes = {n: next(r for r in cluster.info(n)["routes"] if r.get("port")) for n in ("hostile", "victim")}
        manager_port = int(cluster.manager_url.rsplit(":", 1)[1])
        targets = [f"127.0.0.1:{manager_port}", f"127.0.0.1:{cluster.agents['docker-agent']['port']}",
                   f"127.0.0.1:{etcd_server.client_port}", "127.0.0.1:5432", "127.0.0.1:6379",
                   f"127.0.0.1:{routes['victim']['port']}"]
        host_ip = _host_address()
        if host_ip:
            targets += [f"{host_ip}:{manager_port}", f"{host_ip}:5432", f"{host_ip}:{etcd_server.client_port}"]
        storage_file = next(cluster.storage.rglob("echo_server.py"))
        state_dir = env["MOORAGE_AGENT__AGENT__STATE_DIR"]
        reads = [str(storage_file), str(cluster.cluster_secret), "/etc/shadow", f"{state_dir}/kernels"]
        got = probe(f"127.0.0.1:{routes['hostile']['port']}", reads, targets, ["/", "/models"])
        assert "hostile_server.py" in got["list"]["/models"]
        assert http_request(f"http://127.0.0.1:{routes['victim']['port']}/health")[0] == 200
