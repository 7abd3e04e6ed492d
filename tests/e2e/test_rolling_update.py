"""Rolling update under steady load: manager, agent and app proxy as processes; the echo fixture as replicas.

A PATCH that changes the environment rolls every replica over to the new revision with zero failed requests;
a revision that never gets healthy leaves the old one serving; rolling back converges again.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.e2e.harness import REPO, Cluster, cluster_processes, http_request, moorage, moorage_json, wait_for
from tests.services import EtcdServer

pytestmark = pytest.mark.e2e


class SteadyLoad:
    """Two client threads sending GET / through the proxy back to back; counts failures and answering tags."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        self.failures: list[str] = []
        self.tags: list[str | None] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(2)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, _, raw = http_request(self.url + "/", token=self.token, timeout=10)
            except OSError as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
                continue
            if status != 200:
                self.failures.append(f"HTTP {status}: {raw[:200]!r}")
            else:
                self.tags.append(json.loads(raw).get("tag"))
            time.sleep(0.01)

    def __enter__(self) -> SteadyLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)


def _serving(info: dict, revision: int) -> list[dict]:
    return [r for r in info["routes"] if r["revision"] == revision and r["lifecycle"] == "running"
            and r["health"] == "healthy"]


def test_rolling_update_under_load_loses_no_request(tmp_path: Path, pg_url: str, etcd_server: EtcdServer) -> None:
    with cluster_processes(tmp_path, pg_url, etcd_server, heartbeat_timeout=10.0) as cluster:
        _run_scenario(cluster)


def _serve_echo(cluster: Cluster, name: str, replicas: int, env_var: str) -> tuple[dict, str]:
    """One agent, the echo folder, a service of ``replicas`` healthy replicas served by the proxy → (info, token)."""
    env, logs = cluster.cli_env, cluster.daemons.logs
    cluster.agent_env(f"{name}-agent")
    cluster.start_agent(f"{name}-agent")
    cluster.wait_agents_alive([f"{name}-agent"])
    moorage(env, "folder", "create", "echo")
    moorage(env, "folder", "upload", "echo", str(REPO / "configs/models/echo"))
    moorage(env, "service", "create", "echo", str(replicas), "--name", name, "-r", "cpu=0.1", "-r", "mem=32m",
            "-e", env_var)
    svc = wait_for(lambda: (i := cluster.info(name)) and len(_serving(i, 1)) == replicas and i, 90,
                   f"{replicas} healthy replicas", on_timeout=logs)
    token = moorage(env, "service", "token", name, "--duration", "1h").stdout.strip()
    url = svc["service_endpoint"]
    wait_for(lambda: http_request(url + "/", token=token)[0] == 200, 30, "the proxy serving", on_timeout=logs)
    return svc, token


def _run_scenario(cluster: Cluster) -> None:
    env, logs = cluster.cli_env, cluster.daemons.logs
    svc, token = _serve_echo(cluster, "echo-roll", 3, "ECHO_TAG=v1")
    url = svc["service_endpoint"]

    with SteadyLoad(url, token) as load:
        time.sleep(1)
        started = time.monotonic()
        moorage(env, "service", "update", "echo-roll", "-e", "ECHO_TAG=v2", "--wait", "--timeout", "120",
                timeout=150)
        rollout_s = time.monotonic() - started
        time.sleep(1.5)  # the drained v1 replicas finish their grace period while load continues
        answered_before_end = len(load.tags)
        time.sleep(1)
    print(f"MEASURE rolling update of 3 replicas: {rollout_s:.1f}s; {len(load.tags)} requests, "
          f"{len(load.failures)} failed; tags {dict(Counter(load.tags))}")
    assert not load.failures, f"requests failed during the rollout: {load.failures[:5]}"
    assert set(load.tags[answered_before_end:]) == {"v2"}, "after the rollout only v2 replicas answer"
    info = cluster.info("echo-roll")
    assert info["revision"] == 2 and info["rollout"] is None
    assert len(_serving(info, 2)) == 3 and all(r["revision"] == 2 for r in info["routes"]
                                                if r["lifecycle"] in ("running", "provisioning"))

    # A revision whose replicas never start: the old ones keep serving, nothing fails.
    with SteadyLoad(url, token) as load:
        moorage(env, "service", "update", "echo-roll", "-e", "ECHO_TAG=v3", "-e", "ECHO_FAIL_ON_START=broken")
        wait_for(lambda: moorage_json(env, "service", "info", "echo-roll")["retries"] >= 2, 60,
                 "failed starts of the broken revision", on_timeout=logs)
        info = cluster.info("echo-roll")
        assert info["revision"] == 3 and info["rollout"]["outdated"] == 3
        assert len(_serving(info, 2)) == 3, "the old revision must keep all its replicas"
        moorage(env, "service", "update", "echo-roll", "-e", "ECHO_TAG=v4", "--wait", "--timeout", "120",
                timeout=150)
    assert not load.failures, f"requests failed around a broken rollout: {load.failures[:5]}"
    assert "v3" not in load.tags
    info = cluster.info("echo-roll")
    assert info["revision"] == 4 and len(_serving(info, 4)) == 3 and info["rollout"] is None
    assert info["retries"] == 0, "a new revision starts with a fresh back-off"


def _stream_chat(url: str, token: str, words: int, out: dict) -> None:
    """POST a streamed chat completion and collect every SSE data line (runs in a thread)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        body = json.dumps({"model": "echo", "stream": True,
                           "messages": [{"role": "user", "content": " ".join(f"w{i}" for i in range(words))}]})
        conn.request("POST", "/v1/chat/completions", body=body,
                     headers={"Content-Type": "application/json", "Authorization": f"BackendAI {token}"})
        resp = conn.getresponse()
        out["status"] = resp.status
        out["lines"] = [line.decode().strip() for line in resp if line.strip().startswith(b"data:")]
    except OSError as exc:
        out["error"] = repr(exc)
    finally:
        conn.close()


def test_scale_down_lets_in_flight_streams_finish(tmp_path: Path, pg_url: str, etcd_server: EtcdServer) -> None:
    """A drained route leaves the proxy's table at once but its replica lives ``drain_grace``: streams finish."""
    with cluster_processes(tmp_path, pg_url, etcd_server, heartbeat_timeout=10.0,
                           manager_env={"MOORAGE_MANAGER__RECONCILE__DRAIN_GRACE": "8"}) as cluster:
        env, logs = cluster.cli_env, cluster.daemons.logs
        svc, token = _serve_echo(cluster, "echo-drain", 2, "ECHO_CHUNK_DELAY=0.25")
        url = svc["service_endpoint"]
        results: list[dict] = [{}, {}]
        streams = [threading.Thread(target=_stream_chat, args=(url, token, 16, r)) for r in results]
        for t in streams:
            t.start()
            time.sleep(0.2)  # the second stream sees the first in flight and goes to the other replica
        time.sleep(0.5)
        moorage(env, "service", "scale", "echo-drain", "1")
        wait_for(lambda: (t := cluster.route_table(svc["endpoint_id"])) is not None and len(t["routes"]) == 1, 5,
                 "the drained route out of the proxy's table", interval=0.1, on_timeout=logs)
        for t in streams:
            t.join(30)
        for r in results:  # 16 words × 0.25 s = 4 s of streaming, well past the moment of the scale-down
            assert r.get("status") == 200 and "error" not in r, r
            assert r["lines"][-1] == "data: [DONE]" and len(r["lines"]) >= 17, r["lines"][-3:]
        info = cluster.info("echo-drain")
        assert len(_serving(info, 1)) == 1
