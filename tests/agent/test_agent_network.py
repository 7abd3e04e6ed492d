"""A replica's network namespace: no way out unless its service allows outbound connections, and never to
the host's loopback (docs/security.md, "Replica network"). Real agent, real sandbox, real pasta."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.agent.conftest import AgentHarness, definition
from tests.e2e.harness import netns_hosts

HOSTILE = Path(__file__).resolve().parents[1] / "security" / "hostile_model" / "hostile_server.py"


LISTENER = "import socket,sys; s=socket.create_server((sys.argv[1], 0)); print(s.getsockname()[1], flush=True)\n" \
           "while True: s.accept()[0].close()"


@pytest.mark.parametrize("outbound", [False, True])
async def test_outbound_connections_only_when_the_service_allows_them(agent: AgentHarness, outbound: bool) -> None:
    """A second host (a network namespace behind a veth pair) runs a TCP service; the replica reaches it
    only with ``network_outbound``. Never reachable: the host's loopback. Without outbound access nothing of
    the host either (with it, the host's other addresses are like any other host: docs/security.md)."""
    with netns_hosts(1) as (remote,), socket.socket() as local:
        local.bind(("0.0.0.0", 0))  # a service on all of this host's addresses
        local.listen(8)
        local_port = local.getsockname()[1]
        server = subprocess.Popen(["ip", "netns", "exec", remote["ns"], sys.executable, "-c", LISTENER,  # noqa: ASYNC220
                                   remote["ns_ip"]], stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            remote_target = f"{remote['ns_ip']}:{int(server.stdout.readline())}"
            folder = agent.model_folder("hostile", script=HOSTILE)
            body: dict[str, Any] = agent.spec(
                folder, network_outbound=outbound,
                model_definition=definition("python3 {model_path}/replica_server.py {port}"))
            await agent.create(body)
            k = await agent.wait_healthy(body["kernel_id"])
            assert k["status"] == "running", k
            targets = [remote_target, f"127.0.0.1:{local_port}", f"{remote['host_ip']}:{local_port}"]
            status, got = await agent.replica_get(k["port"], "/probe?" + "&".join(f"connect={t}" for t in targets))
        finally:
            server.kill()
            server.wait()
    assert status == 200
    assert (got["connect"][remote_target] == "CONNECTED") is outbound, got
    assert got["connect"][targets[1]] != "CONNECTED", got
    if not outbound:
        assert got["connect"][targets[2]] != "CONNECTED", got
