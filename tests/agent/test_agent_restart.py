"""SIGKILL the agent process under load: its replicas keep answering; the restarted agent re-adopts them
(no duplicate, no orphan) and reports the one that died while it was down."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.runtime.procs import group_members
from common.signing import SignedClient
from tests.agent.conftest import REPLICA_SERVER, SECRET, definition, free_port_range, wait_for
from tests.services import free_port, wait_port

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def start_agent_process(tmp_path: Path, port: int, ports: list[int], log_name: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
    env.update({
        "MOORAGE_AGENT__AGENT__ID": "restart-agent",
        "MOORAGE_AGENT__AGENT__LISTEN_PORT": str(port),
        "MOORAGE_AGENT__AGENT__STATE_DIR": str(tmp_path / "state"),
        "MOORAGE_AGENT__AGENT__STORAGE_ROOT": str(tmp_path / "storage"),
        "MOORAGE_AGENT__AGENT__PORT_RANGE": f"[{ports[0]}, {ports[1]}]",
        "MOORAGE_AGENT__AGENT__MONITOR_INTERVAL": "0.1",
        "MOORAGE_AGENT__SECRETS__CLUSTER_SECRET": SECRET,
    })
    log = open(tmp_path / log_name, "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "-m", "agent"], env=env, cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    return proc


async def test_agent_sigkill_under_load_replicas_keep_serving_and_are_readopted(tmp_path: Path) -> None:
    storage = tmp_path / "storage" / "tiny"
    storage.mkdir(parents=True)
    (storage / "replica_server.py").write_bytes(REPLICA_SERVER.read_bytes())
    port, ports = free_port(), free_port_range()
    url = f"http://127.0.0.1:{port}"
    procs: list[subprocess.Popen[bytes]] = [start_agent_process(tmp_path, port, ports, "agent-1.log")]
    pgids: list[int] = []
    session = aiohttp.ClientSession()
    client = SignedClient(session, SECRET)

    def logs() -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(tmp_path.glob("agent-*.log")))

    async def kernels() -> dict[str, dict[str, Any]]:
        data = await client.call("GET", url, "/rpc/kernels")
        return {k["kernel_id"]: k for k in data["kernels"]}

    try:
        await asyncio.to_thread(wait_port, "127.0.0.1", port, 30)
        import uuid

        endpoint = str(uuid.uuid4())
        specs = [{"kernel_id": str(uuid.uuid4()), "endpoint_id": endpoint, "route_id": str(uuid.uuid4()),
                  "endpoint_name": "ep", "folder_relpath": "tiny", "model_definition": definition()}
                 for _ in range(3)]
        for spec in specs:
            await client.call("POST", url, "/rpc/kernels", spec)

        async def all_healthy() -> bool:
            ks = await kernels()
            return all(ks.get(s["kernel_id"], {}).get("health") == "healthy" for s in specs)

        await wait_for(all_healthy, 60, "three healthy replicas")
        before = await kernels()
        pgids = [int(k["handle"]) for k in before.values()]
        survivor_ports = [before[s["kernel_id"]]["port"] for s in specs[:2]]

        # Steady load on two replicas while the agent is SIGKILLed and restarted.
        failures: list[str] = []
        sent = 0
        stop = asyncio.Event()

        async def load() -> None:
            nonlocal sent
            while not stop.is_set():
                for p in survivor_ports:
                    try:
                        async with session.get(f"http://127.0.0.1:{p}/health",
                                               timeout=aiohttp.ClientTimeout(total=5)) as resp:
                            if resp.status != 200:
                                failures.append(f"{p}: {resp.status}")
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        failures.append(f"{p}: {exc!r}")
                    sent += 1
                await asyncio.sleep(0.02)

        loader = asyncio.create_task(load())
        await asyncio.sleep(0.3)
        os.killpg(procs[0].pid, signal.SIGKILL)
        procs[0].wait(10)
        # While it is down, the third replica dies.
        os.killpg(pgids[2], signal.SIGKILL)
        await wait_for(lambda: not group_members(pgids[2]), 10, "the third replica to die")
        t_restart = time.monotonic()
        procs.append(start_agent_process(tmp_path, port, ports, "agent-2.log"))
        await asyncio.to_thread(wait_port, "127.0.0.1", port, 30)

        async def readopted() -> bool:
            ks = await kernels()
            return all(ks.get(s["kernel_id"], {}).get("health") == "healthy" for s in specs[:2])

        await wait_for(readopted, 30, "re-adoption")
        elapsed = time.monotonic() - t_restart
        await asyncio.sleep(0.5)
        stop.set()
        await loader
        health = await client.call("GET", url, "/rpc/health")
        print(f"\nMEASURE local: agent restart → replicas re-adopted and reported healthy in {elapsed:.2f}s "
              f"(recovery scan {health['recovery']['seconds']:.3f}s); {sent} requests during the restart")
        assert failures == [], f"{len(failures)} of {sent} requests failed: {failures[:5]}\n{logs()}"
        assert sent > 20

        after = await kernels()
        assert set(after) == {s["kernel_id"] for s in specs}, "no duplicate, nothing lost"
        for spec in specs[:2]:
            k, b = after[spec["kernel_id"]], before[spec["kernel_id"]]
            assert (k["status"], k["handle"], k["port"]) == ("running", b["handle"], b["port"])
        dead = after[specs[2]["kernel_id"]]
        assert dead["status"] == "exited" and "while the agent was down" in dead["error"]["message"]
        # A retried create of an adopted kernel does not start a second replica.
        again = await client.call("POST", url, "/rpc/kernels", specs[0])
        assert again["handle"] == before[specs[0]["kernel_id"]]["handle"]
        for pgid in pgids[:2]:
            assert group_members(pgid), "the adopted replica must still run"
        # And the restarted agent still controls them: destroy works.
        for spec in specs:
            await client.call("DELETE", url, f"/rpc/kernels/{spec['kernel_id']}", timeout=30)
        assert not any(group_members(p) for p in pgids)
    finally:
        await session.close()
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        for pgid in pgids:
            if group_members(pgid):
                os.killpg(pgid, signal.SIGKILL)
