#!/usr/bin/env python3
"""Open-loop API load in its own process: signed ``GET /services/{id}`` and ``GET /services`` at fixed rates.

    apiload.py --url URL --access-key AK --secret-key SK --ids FILE [--get-rate 20] [--list-rate 0.5]

Requests are sent on schedule whether or not earlier ones finished (so queueing shows in the latency), each one
HMAC-signed like the official client. One line per finished request on stdout: ``<unix time> <kind>
<seconds> <status>``. Runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from manager.hmac_auth import sign_request  # noqa: E402


async def main(args: argparse.Namespace) -> None:
    ids = Path(args.ids).read_text().split()
    host = urlsplit(args.url).netloc
    out = sys.stdout
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    pending: set[asyncio.Task[None]] = set()
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64), timeout=timeout) as session:

        async def one(kind: str, path: str) -> None:
            headers = sign_request(args.access_key, args.secret_key, "GET", path, host, "application/json")
            start = time.perf_counter()
            try:
                async with session.get(args.url + path, headers=headers) as resp:
                    await resp.read()
                    status = str(resp.status)
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                status = type(exc).__name__
            out.write(f"{time.time():.3f} {kind} {time.perf_counter() - start:.6f} {status}\n")
            out.flush()

        async def schedule(kind: str, rate: float, path: object) -> None:
            if rate <= 0:
                return
            period = 1.0 / rate
            next_at = time.perf_counter() + random.random() * period
            while not stop.is_set():
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                next_at += period
                task = asyncio.create_task(one(kind, path() if callable(path) else str(path)))
                pending.add(task)
                task.add_done_callback(pending.discard)

        rng = random.Random(1)
        runners = [asyncio.create_task(schedule("get", args.get_rate, lambda: f"/services/{rng.choice(ids)}")),
                   asyncio.create_task(schedule("list", args.list_rate, "/services"))]
        await stop.wait()
        for task in runners:
            task.cancel()
        await asyncio.gather(*runners, *pending, return_exceptions=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--access-key", required=True)
    parser.add_argument("--secret-key", required=True)
    parser.add_argument("--ids", required=True, help="file with endpoint ids, whitespace-separated")
    parser.add_argument("--get-rate", type=float, default=20.0, help="GET /services/{id} per second")
    parser.add_argument("--list-rate", type=float, default=0.5, help="GET /services per second")
    asyncio.run(main(parser.parse_args()))
