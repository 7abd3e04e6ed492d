"""The chat page's added latency to first token (issue 14; docs/console.md, "Chat page"): time to the first
streamed token of an echo replica called directly at its endpoint URL (with a token) and through the console's
relay (`POST /api/services/{id}/chat/completions`, with a console session), measured alternately in one run
against one `moorage up`. Goal: under 20 ms added at the median. Loopback only; about a minute."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.e2e.harness import PYTHON, Daemons, free_port_block, moorage, wait_for  # noqa: E402
from tests.services import free_port, wait_port  # noqa: E402

BODY = {"messages": [{"role": "user", "content": "one two three"}], "stream": True}


async def ttft(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> float:
    """Seconds from sending the request to the first content token."""
    start = time.perf_counter()
    async with session.post(url, json=BODY, headers=headers) as resp:
        assert resp.status == 200, (resp.status, await resp.text())
        async for line in resp.content:
            if line.startswith(b"data: {") and b'"content": "' in line and b'"content": ""' not in line:
                return time.perf_counter() - start
    raise AssertionError("no token")


async def measure(console: str, login_url: str, endpoint: str, service_id: str, token: str, n: int) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.get(login_url, allow_redirects=False) as resp:
            assert resp.status == 303
        async with session.get(console + "/console/session") as resp:
            csrf = (await resp.json())["csrf_token"]
        relay = (f"{console}/api/services/{service_id}/chat/completions",
                 {"X-Moorage-CSRF": csrf, "Origin": console})
        direct = (endpoint + "/v1/chat/completions", {"Authorization": f"BackendAI {token}"})
        for _ in range(5):  # warm both paths
            await ttft(session, *relay)
            await ttft(session, *direct)
        times: dict[str, list[float]] = {"direct": [], "relay": []}
        for _ in range(n):  # alternate, so drift affects both alike
            times["direct"].append(await ttft(session, *direct))
            times["relay"].append(await ttft(session, *relay))
    for name, values in times.items():
        values.sort()
        print(f"{name:>6}: TTFT p50 {statistics.median(values) * 1000:7.2f} ms   "
              f"p90 {values[int(len(values) * 0.9)] * 1000:7.2f} ms   (n={len(values)})")
    added = (statistics.median(times["relay"]) - statistics.median(times["direct"])) * 1000
    print(f" added by the console's relay at p50: {added:.2f} ms (goal: < 20 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=200, help="requests per path")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        port, console_port, proxy_base = free_port(), free_port(), free_port_block(4)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
        env["MOORAGE_DATA_DIR"] = str(data_dir)
        daemons = Daemons(Path(tmp))
        daemons.start("up", [PYTHON, "-m", "manager.cli.main", "up", "--port", str(port), "--console-port",
                             str(console_port), "--proxy-ports", f"{proxy_base}-{proxy_base + 3}"], env)
        try:
            wait_port("127.0.0.1", console_port, 60)
            info = wait_for(lambda: json.loads((data_dir / "cluster.json").read_text())
                            if (data_dir / "cluster.json").exists() else None, 30, "cluster.json")
            moorage(env, "folder", "create", "echo")
            moorage(env, "folder", "upload", "echo", str(REPO / "configs/models/echo"))
            moorage(env, "service", "create", "echo", "1", "--name", "bench-chat", "-e", "ECHO_CHUNK_DELAY=0",
                    "-r", "cpu=1", "-r", "mem=128m")
            service = wait_for(lambda: (i := json.loads(moorage(env, "service", "info", "bench-chat", "--json")
                                                        .stdout)) and i["status"] == "HEALTHY" and i,
                               120, "the echo service")
            token = moorage(env, "service", "token", "bench-chat", "--duration", "1h").stdout.strip()
            asyncio.run(measure(f"http://127.0.0.1:{console_port}", info["console_login_url"],
                                service["service_endpoint"], service["endpoint_id"], token, args.n))
        finally:
            daemons.stop_all()


if __name__ == "__main__":
    main()
