"""Process harness for end-to-end tests: starts real daemons, runs the real `moorage` CLI, tails logs on failure."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.store import ROUTES_PREFIX, EtcdStore
from manager.control.leader import LEADER_KEY
from tests.services import EtcdServer, free_port, wait_port

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def free_port_block(width: int) -> int:
    """The first port of ``width`` consecutive free ports, below the kernel's ephemeral range (32768+) so that
    outgoing connections of a busy machine cannot grab them between the check and the use."""
    import random
    import socket

    for _ in range(200):
        base = random.randrange(20000, 32000 - width)
        ok = True
        for port in range(base, base + width):
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no block of free ports")


class Daemons:
    """Starts processes with their output in log files; stops them all (SIGTERM, then SIGKILL)."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                start_new_session=True)
        self.procs[name] = proc
        return proc

    def logs(self, tail: int = 60) -> str:
        out = []
        for name in self.procs:
            lines = (self.log_dir / f"{name}.log").read_text(errors="replace").splitlines()[-tail:]
            out.append(f"----- {name} -----\n" + "\n".join(lines))
        return "\n".join(out)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def moorage(env: dict[str, str], *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run([PYTHON, "-m", "manager.cli.main", *args], env=env, cwd=REPO, capture_output=True,
                            text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(
            f"moorage {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def moorage_json(env: dict[str, str], *args: str) -> Any:
    return json.loads(moorage(env, *args, "--json").stdout)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.3,
             on_timeout: Callable[[], str] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    extra = on_timeout() if on_timeout else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last={last!r}\n{extra}")


def http_request(url: str, method: str = "GET", body: Any = None, token: str | None = None,
                 timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"BackendAI {token}"
    try:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request(method, target, body=json.dumps(body) if body is not None else None,
                     headers=headers)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def chat(url: str, token: str | None, text: str = "hello") -> tuple[int, bytes]:
    status, _, body = http_request(url + "/v1/chat/completions", "POST",
                                   {"model": "echo", "messages": [{"role": "user", "content": text}]}, token)
    return status, body


def pids_matching(pattern: str) -> list[int]:
    result = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False)
    return [int(p) for p in result.stdout.split()]


def _ancestors_mention(pid: int, text: str) -> bool:
    """Whether ``pid`` or one of its ancestors has ``text`` in its command line (a replica's sandbox binds its
    storage path; the replica itself sees the folder at /models)."""
    needle = text.encode()
    while pid > 1:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if needle in fh.read():
                    return True
            with open(f"/proc/{pid}/stat", "rb") as fh:
                pid = int(fh.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False


def replica_pids(pattern: str, storage: Path) -> list[int]:
    """``pids_matching(pattern)`` limited to replicas of the cluster whose storage root is ``storage``: other test
    runs on the same machine start echo replicas too."""
    return [pid for pid in pids_matching(pattern) if _ancestors_mention(pid, str(storage))]


@contextlib.contextmanager
def private_file(path: Path, content: str) -> Iterator[Path]:
    path.write_text(content)
    path.chmod(0o600)
    yield path


# -- a whole cluster as processes ---------------------------------------------------------------------------------
CLI = [PYTHON, "-m", "manager.cli.main"]


@dataclass
class Cluster:
    tmp: Path
    env: dict[str, str]  # daemon env (manager/appproxy)
    cli_env: dict[str, str]
    daemons: Daemons
    etcd: EtcdServer
    namespace: str
    storage: Path
    cluster_secret: Path
    manager_url: str
    agents: dict[str, dict[str, Any]] = field(default_factory=dict)

    def agent_env(self, agent_id: str, listen_host: str = "127.0.0.1", replica_host: str = "127.0.0.1",
                  manager_host: str = "127.0.0.1", **extra: str) -> dict[str, str]:
        port = free_port()
        low, high = _port_range(50)  # the agent skips ports it cannot bind
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
        env.update({
            "MOORAGE_AGENT__AGENT__ID": agent_id,
            "MOORAGE_AGENT__AGENT__LISTEN_HOST": listen_host,
            "MOORAGE_AGENT__AGENT__LISTEN_PORT": str(port),
            "MOORAGE_AGENT__AGENT__REPLICA_HOST": replica_host,
            "MOORAGE_AGENT__AGENT__MANAGER_URL": f"http://{manager_host}:{self.manager_url.rsplit(':', 1)[1]}",
            "MOORAGE_AGENT__AGENT__STATE_DIR": str(self.tmp / f"state-{agent_id}"),
            "MOORAGE_AGENT__AGENT__STORAGE_ROOT": str(self.storage),
            "MOORAGE_AGENT__AGENT__PORT_RANGE": f"[{low}, {high}]",
            "MOORAGE_AGENT__AGENT__HEARTBEAT_INTERVAL": "0.5",
            "MOORAGE_AGENT__RESOURCES__RESERVED_MEM": "0",
            "MOORAGE_AGENT__SECRETS__CLUSTER_SECRET_FILE": str(self.cluster_secret),
        })
        env.update(extra)
        self.agents[agent_id] = {"port": port, "host": listen_host, "env": env}
        return env

    def start_agent(self, agent_id: str, prefix: list[str] | None = None, name: str | None = None) -> None:
        env = self.agents[agent_id]["env"]
        self.daemons.start(name or agent_id, [*(prefix or []), *CLI, "agent", "--config",
                                              str(REPO / "configs/agent.toml")], env)

    def kill_agent(self, name: str) -> None:
        proc = self.daemons.procs[name]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def start_manager(self, name: str, **extra: str) -> str:
        """Another manager process with the same env (database, etcd, secrets) on its own port; returns its URL."""
        port = free_port()
        env = {**self.env, "MOORAGE_MANAGER__MANAGER__LISTEN_PORT": str(port), **extra}
        self.daemons.start(name, [*CLI, "manager", "--config", str(REPO / "configs/manager.toml")], env)
        wait_port("127.0.0.1", port, 30)
        return f"http://127.0.0.1:{port}"

    def leader_claim(self) -> dict[str, Any] | None:
        """The managers' leader key (manager.control.leader): id, url, lease, since; None while nobody leads."""
        async def get() -> str | None:
            store = EtcdStore(port=self.etcd.client_port, namespace=self.namespace)
            try:
                return await store.get(LEADER_KEY)
            finally:
                await store.close()

        raw = asyncio.run(get())
        return json.loads(raw) if raw else None

    def route_table(self, endpoint_id: str) -> dict[str, Any] | None:
        async def get() -> str | None:
            store = EtcdStore(port=self.etcd.client_port, namespace=self.namespace)
            try:
                return await store.get(ROUTES_PREFIX + endpoint_id)
            finally:
                await store.close()

        raw = asyncio.run(get())
        return json.loads(raw) if raw else None

    def info(self, name: str) -> dict[str, Any]:
        return moorage_json(self.cli_env, "service", "info", name)

    def wait_agents_alive(self, agent_ids: list[str], timeout: float = 60) -> None:
        """Until the manager lists every one of these agents as alive (so placement can use all of them)."""
        def alive() -> bool:
            listed = {a["id"]: a["status"] for a in moorage_json(self.cli_env, "agents", "--json")}
            return all(listed.get(a) == "alive" for a in agent_ids)
        wait_for(alive, timeout, f"agents {agent_ids} alive", on_timeout=self.daemons.logs)


@contextlib.contextmanager
def cluster_processes(tmp_path: Path, pg_url: str, etcd: EtcdServer, manager_host: str = "127.0.0.1",
                      heartbeat_timeout: float = 3.0, manager_env: dict[str, str] | None = None) -> Iterator[Cluster]:
    cluster_secret = tmp_path / "cluster_secret"
    jwt_secret = tmp_path / "jwt_secret"
    keypair_key = tmp_path / "keypair_encryption_key"
    for f in (cluster_secret, jwt_secret, keypair_key):
        f.write_text(secrets.token_urlsafe(32))
        f.chmod(0o600)
    storage = tmp_path / "storage"
    manager_port = free_port()
    proxy_base = free_port_block(10)
    namespace = f"/e2e-{secrets.token_hex(4)}"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
    env = {
        **base_env,
        "MOORAGE_MANAGER__DB__URL": pg_url,
        "MOORAGE_MANAGER__ETCD__PORT": str(etcd.client_port),
        "MOORAGE_MANAGER__ETCD__NAMESPACE": namespace,
        "MOORAGE_MANAGER__MANAGER__LISTEN_HOST": manager_host,
        "MOORAGE_MANAGER__MANAGER__LISTEN_PORT": str(manager_port),
        "MOORAGE_MANAGER__CONSOLE__LISTEN_PORT": "0",  # any free port: managers share this host
        "MOORAGE_MANAGER__MANAGER__STORAGE_ROOT": str(storage),
        "MOORAGE_MANAGER__APPPROXY__PORT_RANGE": f"[{proxy_base}, {proxy_base + 9}]",
        "MOORAGE_MANAGER__SECRETS__CLUSTER_SECRET_FILE": str(cluster_secret),
        "MOORAGE_MANAGER__SECRETS__JWT_SECRET_FILE": str(jwt_secret),
        "MOORAGE_MANAGER__SECRETS__KEYPAIR_ENCRYPTION_KEY_FILE": str(keypair_key),
        "MOORAGE_MANAGER__RECONCILE__INTERVAL": "0.5",
        "MOORAGE_MANAGER__RECONCILE__DRAIN_GRACE": "1",
        "MOORAGE_MANAGER__RECONCILE__AGENT_HEARTBEAT_TIMEOUT": str(heartbeat_timeout),
        "MOORAGE_APPPROXY__ETCD__PORT": str(etcd.client_port),
        "MOORAGE_APPPROXY__ETCD__NAMESPACE": namespace,
        "MOORAGE_APPPROXY__SECRETS__JWT_SECRET_FILE": str(jwt_secret),
        **(manager_env or {}),
    }
    moorage(env, "db", "upgrade", "--url", pg_url)
    admin = json.loads(moorage(env, "admin", "create-user", "admin@e2e.test", "--role", "superadmin",
                               "--url", pg_url).stdout)
    daemons = Daemons(tmp_path)
    daemons.start("manager", [*CLI, "manager", "--config", str(REPO / "configs/manager.toml")], env)
    daemons.start("appproxy", [*CLI, "appproxy", "--config", str(REPO / "configs/appproxy.toml")], env)
    connect = "127.0.0.1" if manager_host in ("0.0.0.0", "127.0.0.1") else manager_host
    manager_url = f"http://{connect}:{manager_port}"
    cli_env = {**base_env, "MOORAGE_ENDPOINT": manager_url, "MOORAGE_ACCESS_KEY": admin["access_key"],
               "MOORAGE_SECRET_KEY": admin["secret_key"], "MOORAGE_DATA_DIR": str(tmp_path / "cli")}
    cluster = Cluster(tmp=tmp_path, env=env, cli_env=cli_env, daemons=daemons, etcd=etcd, namespace=namespace,
                      storage=storage, cluster_secret=cluster_secret, manager_url=manager_url)
    try:
        wait_port(connect, manager_port, 30)
        yield cluster
    finally:
        daemons.stop_all()
        for pid in pids_matching(f"{storage}"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)




def _port_range(width: int) -> tuple[int, int]:
    base = free_port_block(width)
    return base, base + width - 1


@contextlib.contextmanager
def netns_hosts(count: int) -> Iterator[list[dict[str, str]]]:
    """``count`` network namespaces, each joined to the host by a veth pair: host side 10.231.<n>.1/24,
    namespace side 10.231.<n>.2/24 (n chosen free). Everything is removed afterwards."""
    tag = secrets.token_hex(2)
    created: list[dict[str, str]] = []

    def ip(*args: str, ns: str | None = None) -> None:
        cmd = (["ip", "netns", "exec", ns, "ip"] if ns else ["ip"]) + list(args)
        subprocess.run(cmd, check=True, capture_output=True, timeout=20)

    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    subnets = [n for n in range(10, 250) if f"10.231.{n}." not in used]
    try:
        for i in range(count):
            n = subnets[(int(tag, 16) + i * 7) % len(subnets)]
            ns, host_if, ns_if = f"moorage-{tag}-{i}", f"mh{tag}{i}", f"mn{tag}{i}"
            entry = {"ns": ns, "host_if": host_if, "host_ip": f"10.231.{n}.1", "ns_ip": f"10.231.{n}.2"}
            subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True, timeout=20)
            created.append(entry)
            ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
            ip("link", "set", ns_if, "netns", ns)
            ip("addr", "add", f"{entry['host_ip']}/24", "dev", host_if)
            ip("link", "set", host_if, "up")
            ip("addr", "add", f"{entry['ns_ip']}/24", "dev", ns_if, ns=ns)
            ip("link", "set", ns_if, "up", ns=ns)
            ip("link", "set", "lo", "up", ns=ns)
            ip("route", "add", "default", "via", entry["host_ip"], ns=ns)
        yield created
    finally:
        for entry in created:
            subprocess.run(["ip", "link", "del", entry["host_if"]], capture_output=True, check=False)
            subprocess.run(["ip", "netns", "del", entry["ns"]], capture_output=True, check=False)
