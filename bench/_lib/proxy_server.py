"""One app proxy worker for the benchmarks: ``AppProxy`` + ``MemoryStore`` with the given route tables.

``python bench/_lib/proxy_server.py --tables tables.json [--uvloop] [--admin-port N] [--gateway JSON --keys
keys.json]``; prints READY, stops on SIGTERM. Runs the real proxy object (the same code as ``python -m
appproxy``), minus etcd. With ``--gateway`` (the ``[gateway]`` section as JSON) the gateway listener runs too,
with the API key records of ``--keys`` published as the manager would, and its usage records serialised in
batches as the manager-bound sink does (then dropped: there is no manager).
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
from common.apikeys import APIKEYS_PREFIX  # noqa: E402
from common.store import ROUTES_PREFIX, MemoryStore  # noqa: E402
from common.usage import UsageBatch, UsageRecord  # noqa: E402

SECRET = "bench-secret-0123456789abcdef0123456789"


async def main(args: argparse.Namespace) -> None:
    store = MemoryStore()
    for table in json.loads(Path(args.tables).read_text()):
        await store.put(ROUTES_PREFIX + table["endpoint_id"], json.dumps(table))
    for record in json.loads(Path(args.keys).read_text()) if args.keys else []:
        await store.put(APIKEYS_PREFIX + record["key_hash"], json.dumps(record))
    proxy_section: dict = {"max_concurrency_per_endpoint": 100000, **json.loads(args.proxy)}
    secrets = {"jwt_secret": SECRET}
    if args.admin_port is not None:
        proxy_section["admin_port"] = args.admin_port
        secrets["cluster_secret"] = SECRET
    sections = {"proxy": proxy_section, "secrets": secrets, "outlier": json.loads(args.outlier)}
    if args.gateway:
        sections["gateway"] = json.loads(args.gateway)
    config = ProxyConfig.model_validate(sections)
    proxy = AppProxy(config, store, usage_sink=_usage_sink if args.gateway else None)
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
    if args.gateway:
        print(f"usage records metered: {usage_records}", file=sys.stderr, flush=True)
    if _gc_pauses:
        print(f"gc: {len(_gc_pauses)} collections, max pause {max(_gc_pauses) * 1000:.1f} ms, "
              f"total {sum(_gc_pauses) * 1000:.0f} ms", file=sys.stderr, flush=True)


_gc_pauses: list[float] = []
usage_records = 0


async def _usage_sink(records: list[UsageRecord]) -> None:
    """What the manager-bound sink does with a batch, minus the HTTP call: serialise it."""
    global usage_records
    UsageBatch(records=list(records)).model_dump_json()
    usage_records += len(records)


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
    parser.add_argument("--gateway", help="[gateway] keys as JSON: run the gateway listener too")
    parser.add_argument("--keys", help="a JSON list of common.apikeys.ApiKeyRecord to publish")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if os.environ.get("MOORAGE_BENCH_GC_STATS"):
        _watch_gc()
    if args.uvloop:
        import uvloop

        uvloop.run(main(args))
    else:
        asyncio.run(main(args))
