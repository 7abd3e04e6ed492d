"""One app proxy worker for the benchmarks: ``AppProxy`` + ``MemoryStore`` with the given route tables.

``python bench/_lib/proxy_server.py --tables tables.json [--uvloop] [--admin-port N]``; prints READY, stops on
SIGTERM. Runs the real proxy object (the same code as ``python -m appproxy``), minus etcd.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from appproxy.config import ProxyConfig  # noqa: E402
from appproxy.server import AppProxy, tune_gc  # noqa: E402
from common.store import ROUTES_PREFIX, MemoryStore  # noqa: E402

SECRET = "bench-secret-0123456789abcdef0123456789"


async def main(args: argparse.Namespace) -> None:
    store = MemoryStore()
    for table in json.loads(Path(args.tables).read_text()):
        await store.put(ROUTES_PREFIX + table["endpoint_id"], json.dumps(table))
    proxy_section: dict = {"max_concurrency_per_endpoint": 100000, **json.loads(args.proxy)}
    secrets = {"jwt_secret": SECRET}
    if args.admin_port is not None:
        proxy_section["admin_port"] = args.admin_port
        secrets["cluster_secret"] = SECRET
    config = ProxyConfig.model_validate({"proxy": proxy_section, "secrets": secrets,
                                         "outlier": json.loads(args.outlier)})
    proxy = AppProxy(config, store)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await proxy.start()
    if not os.environ.get("MOORAGE_BENCH_DEFAULT_GC"):
        tune_gc()  # as python -m appproxy does
    print("READY", flush=True)
    await stop.wait()
    await proxy.stop()
    if _gc_pauses:
        print(f"gc: {len(_gc_pauses)} collections, max pause {max(_gc_pauses) * 1000:.1f} ms, "
              f"total {sum(_gc_pauses) * 1000:.0f} ms", file=sys.stderr, flush=True)


_gc_pauses: list[float] = []


def _watch_gc() -> None:
    """Record garbage collector pauses (MOORAGE_BENCH_GC_STATS=1): a full collection stalls the event loop."""
    import gc
    import time

    started = [0.0]

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            _gc_pauses.append(time.perf_counter() - started[0])

    gc.callbacks.append(callback)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--tables", required=True)
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--admin-port", type=int)
    parser.add_argument("--proxy", default="{}", help="extra [proxy] keys as JSON")
    parser.add_argument("--outlier", default="{}", help="[outlier] keys as JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if os.environ.get("MOORAGE_BENCH_GC_STATS"):
        _watch_gc()
    if args.uvloop:
        import uvloop

        uvloop.run(main(args))
    else:
        asyncio.run(main(args))
