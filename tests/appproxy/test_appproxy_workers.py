"""``python -m appproxy --workers 2``: two processes on one port set (SO_REUSEPORT), both serve; SIGTERM to the
supervisor stops them all."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import uuid
from pathlib import Path

import aiohttp

from appproxy.scrape import parse_exposition
from common.store import ROUTES_PREFIX, EtcdStore
from tests.appproxy.appproxy_testkit import SECRET, eventually, free_port, make_table, port_accepts

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SECRET = "cluster-secret-for-the-appproxy-tests-0123"


def two_free_ports() -> int:
    """A port p such that p and p + 1 are both free (worker k's admin listener is on admin_port + k)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


async def test_two_workers_share_the_ports(etcd_server, upstreams, tmp_path):
    up = await upstreams("a")
    namespace = f"/t-{uuid.uuid4().hex[:8]}"
    table = make_table(port=free_port(), routes=[up.target()], open_to_public=True)
    writer = EtcdStore("127.0.0.1", etcd_server.client_port, namespace)
    await writer.put(ROUTES_PREFIX + str(table.endpoint_id), table.model_dump_json())
    admin = two_free_ports()
    config = tmp_path / "appproxy.toml"
    config.write_text(f'[proxy]\nadmin_port = {admin}\ninitial_sync_timeout = 10\nshutdown_timeout = 1\n'
                      f'[etcd]\nport = {etcd_server.client_port}\nnamespace = "{namespace}"\n')
    env = {**os.environ, "PYTHONPATH": str(REPO), "MOORAGE_APPPROXY__SECRETS__JWT_SECRET": SECRET,
           "MOORAGE_APPPROXY__SECRETS__CLUSTER_SECRET": CLUSTER_SECRET}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "appproxy", "--config", str(config), "--workers", "2", "--log-level", "warning",
        cwd=REPO, env=env)
    try:
        for port in (admin, admin + 1, table.port):
            await eventually(lambda p=port: port_accepts(p), timeout=30, what=f"port {port} open")

        async def both_served() -> bool:
            for _ in range(10):  # a new connection each time: the kernel spreads them over the workers
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as client:
                    async with client.get(f"http://127.0.0.1:{table.port}/echo") as resp:
                        assert resp.status == 200
            counts = []
            async with aiohttp.ClientSession() as client:
                for port in (admin, admin + 1):
                    async with client.get(f"http://127.0.0.1:{port}/metrics") as resp:
                        counts.append(parse_exposition(await resp.text()).get("moorage_appproxy_requests_total", 0))
            return all(n > 0 for n in counts)

        await eventually(both_served, timeout=30, interval=0.1, what="both workers serving requests")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        for port in (admin, admin + 1, table.port):
            assert not await port_accepts(port)  # the workers are gone too
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await writer.close()
