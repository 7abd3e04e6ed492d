"""A small aiohttp replica for the benchmarks.

``GET /`` and ``/static``: a small fixed body. ``GET /sse?n=N&interval=S``: N SSE chunks, S seconds apart, each
``data: <time.monotonic_ns()>`` (CLOCK_MONOTONIC is system-wide on Linux, so the client can compare it).
``GET /metrics``: a tiny exposition. Prints READY when listening.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time

from aiohttp import web

BODY = b"x" * 100


async def static(request: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type="text/plain")


async def sse(request: web.Request) -> web.StreamResponse:
    n = int(request.query.get("n", "10"))
    interval = float(request.query.get("interval", "1"))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    try:
        await response.prepare(request)
        await asyncio.sleep(random.random() * interval)  # spread the chunks of many streams over the interval
        for _ in range(n):
            await response.write(b"data: %d\n\n" % time.monotonic_ns())
            await asyncio.sleep(interval)
        await response.write_eof()
    except ConnectionError:  # the client (or the proxy) went away: expected when a benchmark phase ends
        pass
    return response


async def metrics(request: web.Request) -> web.Response:
    return web.Response(text="# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 0\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    app = web.Application()
    app.router.add_get("/", static)
    app.router.add_get("/static", static)
    app.router.add_get("/sse", sse)
    app.router.add_get("/metrics", metrics)
    if args.uvloop:
        import uvloop

        uvloop.install()
    print("READY", flush=True, file=sys.stderr)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, backlog=4096)


if __name__ == "__main__":
    main()
