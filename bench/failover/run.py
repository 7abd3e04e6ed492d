#!/usr/bin/env python3
"""Steady load on an endpoint with 3 replicas (real processes); SIGKILL one; count failures (loopback, ~20 s).

    .venv/bin/python bench/failover/run.py [--concurrency 16] [--seconds 12] [--kill-at 4]

Three aiohttp replicas and one app proxy worker (its own process, default outlier settings: 3 consecutive
failures eject) are started; this process sends requests with ``--concurrency`` workers for ``--seconds``
and SIGKILLs replica 0 at ``--kill-at``. It prints the requests that failed (target 0: requests that hit the
dead replica before the first byte are retried on another one) and the time from the kill until the proxy's
``moorage_appproxy_ejections_total`` for that route went up (polled every 10 ms on the admin port).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench._lib.common import LIB, PYTHON, Procs, free_port, wait_port  # noqa: E402


async def ejections(session: aiohttp.ClientSession, admin: int, route: str) -> float:
    async with session.get(f"http://127.0.0.1:{admin}/metrics") as resp:
        text = await resp.text()
    m = re.search(rf'moorage_appproxy_ejections_total{{[^}}]*route="{route}"[^}}]*}} ([\d.e+]+)', text)
    return float(m.group(1)) if m else 0.0


async def retries(session: aiohttp.ClientSession, admin: int) -> float:
    async with session.get(f"http://127.0.0.1:{admin}/metrics") as resp:
        text = await resp.text()
    return sum(float(v) for v in re.findall(r"^moorage_appproxy_retries_total\{[^}]*\} ([\d.e+]+)", text, re.M))


async def main(args: argparse.Namespace) -> None:
    tmp = tempfile.mkdtemp(prefix="moorage-bench-")
    ports = [free_port() for _ in range(3)]
    proxy_port, admin_port = free_port(), free_port()
    routes = [{"route_id": str(uuid.uuid4()), "host": "127.0.0.1", "port": p} for p in ports]
    table = {"endpoint_id": str(uuid.uuid4()), "name": "bench", "port": proxy_port, "open_to_public": True,
             "routes": routes}
    Path(tmp, "tables.json").write_text(json.dumps([table]))
    statuses: Counter[str] = Counter()
    with Procs() as procs:
        replicas = []
        for port in ports:
            replicas.append(procs.start([PYTHON, str(LIB / "upstream.py"), "--port", str(port)],
                                        stderr=open(os.devnull, "w")))
        for port, proc in zip(ports, replicas, strict=True):
            wait_port(port, proc=proc)
        proxy = procs.start([PYTHON, str(LIB / "proxy_server.py"), "--tables", str(Path(tmp, "tables.json")),
                             "--admin-port", str(admin_port)])
        wait_port(proxy_port, proc=proxy)
        wait_port(admin_port, proc=proxy)
        url = f"http://127.0.0.1:{proxy_port}/static"
        started = time.monotonic()
        end = started + args.seconds
        killed_at: float | None = None
        ejected_at: float | None = None

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10),
                                         connector=aiohttp.TCPConnector(limit=0)) as session:
            async def worker() -> None:
                while time.monotonic() < end:
                    try:
                        async with session.get(url) as resp:
                            await resp.read()
                            statuses[str(resp.status)] += 1
                    except Exception as exc:  # noqa: BLE001
                        statuses[type(exc).__name__] += 1

            async def chaos() -> None:
                nonlocal killed_at, ejected_at
                await asyncio.sleep(args.kill_at)
                replicas[0].send_signal(signal.SIGKILL)
                killed_at = time.monotonic()
                async with aiohttp.ClientSession() as admin:
                    while ejected_at is None and time.monotonic() < end:
                        if await ejections(admin, admin_port, routes[0]["route_id"]) >= 1:
                            ejected_at = time.monotonic()
                        else:
                            await asyncio.sleep(0.01)

            await asyncio.gather(chaos(), *(worker() for _ in range(args.concurrency)))
            async with aiohttp.ClientSession() as admin:
                retried = await retries(admin, admin_port)
    total = sum(statuses.values())
    failed = total - statuses.get("200", 0)
    print(f"machine: {os.cpu_count()} CPUs; 3 replicas, concurrency {args.concurrency}, {args.seconds}s, "
          f"SIGKILL replica 0 at {args.kill_at}s")
    print(f"requests: {total} ({total / args.seconds:.0f}/s), failed: {failed} (target 0); "
          f"outcomes: {dict(statuses)}; retried on another replica: {retried:.0f}")
    if killed_at is not None and ejected_at is not None:
        print(f"killed replica left rotation (ejected) {1000 * (ejected_at - killed_at):.0f} ms after SIGKILL "
              f"(polling every 10 ms)")
    else:
        print("killed replica was not ejected during the run")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=12)
    parser.add_argument("--kill-at", type=float, default=4)
    asyncio.run(main(parser.parse_args()))
