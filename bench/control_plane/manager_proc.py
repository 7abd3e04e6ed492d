#!/usr/bin/env python3
"""The manager under test, in its own process: ``build_manager_app`` as ``moorage manager`` runs it.

    manager_proc.py --config CONFIG.json [--etcd HOST:PORT] [--log FILE]

The API, the heartbeat handler and the control loop share one event loop, as in ``moorage manager``. The only
additions are measurements: ``ControlLoop.tick`` and its public phases are wrapped (on the class) to time them,
SQLAlchemy cursor events count statements issued on behalf of a tick, one JSON line per tick is written to
stdout, and once a second the worst event-loop lag. Commands on stdin: ``profile DIR`` cProfiles every following
tick into ``DIR/tick-N.prof`` (plus ``tick-N.json``: time per SQL statement shape); ``noprofile`` stops;
``tasks`` prints every task's stack to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import cProfile
import functools
import inspect
import json
import logging
import re
import signal
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy import event

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from common.store import EtcdStore, KVStore, MemoryStore  # noqa: E402
from manager.config import ManagerConfig  # noqa: E402
from manager.context import CTX  # noqa: E402
from manager.control.loop import ControlLoop  # noqa: E402
from manager.server import build_manager_app  # noqa: E402

_SQL_SHAPE = re.compile(r"(\$\d+(::[A-Z]+)?)(, \$\d+(::[A-Z]+)?)*|\s+")


class TickStats:
    """What one tick did: per-phase wall time, SQL statements and their time, per statement shape."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = defaultdict(float)
        self.sql_count = 0
        self.sql_time = 0.0
        self.by_shape: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])


CURRENT: contextvars.ContextVar[TickStats | None] = contextvars.ContextVar("bench_tick", default=None)


def shape(statement: str) -> str:
    return _SQL_SHAPE.sub(lambda m: " " if m.group(0).isspace() else "$n", statement).strip()[:160]


def instrument_sql(engine: Any) -> None:
    """Count statements (and the time until their result) issued inside a tick, including its child tasks."""

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _before(conn, cursor, statement, parameters, context, executemany) -> None:
        if CURRENT.get() is not None:
            conn.info.setdefault("bench_t0", []).append(time.perf_counter())

    @event.listens_for(engine.sync_engine, "after_cursor_execute")
    def _after(conn, cursor, statement, parameters, context, executemany) -> None:
        stats = CURRENT.get()
        if stats is None or not conn.info.get("bench_t0"):
            return
        spent = time.perf_counter() - conn.info["bench_t0"].pop()
        stats.sql_count += 1
        stats.sql_time += spent
        entry = stats.by_shape[shape(statement)]
        entry[0] += 1
        entry[1] += spent


class TickTimer:
    """Times every ``ControlLoop.tick`` and its public phases, by wrapping the class's methods in this process.

    The manager's own code (``build_manager_app`` → leader election → ``ManagerDuties`` → ``ControlLoop.run``)
    is untouched; whichever instance it creates is measured. New public coroutine methods become phases.
    """

    def __init__(self) -> None:
        self.n = 0
        self.profile_dir: Path | None = None
        for name, member in inspect.getmembers(ControlLoop, inspect.iscoroutinefunction):
            if name == "tick":
                setattr(ControlLoop, name, self._timed_tick(member))
            elif not name.startswith("_") and name != "run":
                setattr(ControlLoop, name, self._timed_phase(name, member))

    def _timed_phase(self, name: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            stats = CURRENT.get()
            start = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                if stats is not None:
                    stats.phases[name] += time.perf_counter() - start
        return wrapper

    def _timed_tick(self, fn: Callable[[ControlLoop], Awaitable[None]]) -> Callable[[ControlLoop], Awaitable[None]]:
        @functools.wraps(fn)
        async def wrapper(loop: ControlLoop) -> None:
            self.n += 1
            stats = TickStats()
            token = CURRENT.set(stats)
            profiler = cProfile.Profile() if self.profile_dir else None
            error = None
            started, cpu0 = time.time(), time.process_time()
            print(json.dumps({"start": self.n, "t": started}), flush=True)
            t0 = time.perf_counter()
            if profiler:
                profiler.enable()
            try:
                await fn(loop)
            except asyncio.CancelledError:
                error = "cancelled"  # the loop was stopped mid-tick (leadership lost, shutdown)
                raise
            except Exception as exc:
                error = repr(exc)
                raise
            finally:
                if profiler:
                    profiler.disable()
                dur = time.perf_counter() - t0
                CURRENT.reset(token)
                record = {"n": self.n, "t": started, "dur": dur, "cpu": time.process_time() - cpu0,
                          "phases": dict(stats.phases), "sql": stats.sql_count, "sql_time": stats.sql_time,
                          "profiled": profiler is not None, "error": error}
                if profiler and self.profile_dir:
                    self._dump(profiler, stats, self.profile_dir / f"tick-{self.n}")
                print(json.dumps(record), flush=True)
        return wrapper

    @staticmethod
    def _dump(profiler: cProfile.Profile, stats: TickStats, base: Path) -> None:
        """The profile, the SQL statement shapes, and which profiled functions are coroutines (their inclusive
        times are meaningless: cProfile loses track of frames across greenlet switches inside SQLAlchemy)."""
        profiler.dump_stats(f"{base}.prof")
        coroutines = [[e.code.co_filename, e.code.co_firstlineno, e.code.co_name] for e in profiler.getstats()
                      if not isinstance(e.code, str) and e.code.co_flags & inspect.CO_COROUTINE]
        Path(f"{base}.json").write_text(json.dumps({"sql": stats.by_shape, "coroutines": coroutines}))

    async def commands(self) -> None:
        reader = asyncio.StreamReader()
        await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := (await reader.readline()).decode().strip():
            cmd, _, arg = line.partition(" ")
            if cmd == "profile":
                self.profile_dir = Path(arg)
                self.profile_dir.mkdir(parents=True, exist_ok=True)
            elif cmd == "noprofile":
                self.profile_dir = None
            elif cmd == "tasks":  # diagnostics: where every task is waiting, to stderr
                for task in asyncio.all_tasks():
                    print(f"--- {task.get_name()}: {task.get_coro()!r}", file=sys.stderr)
                    with contextlib.suppress(Exception):  # e.g. Cython coroutines have no frames
                        task.print_stack(limit=30, file=sys.stderr)
                sys.stderr.flush()


async def lag_monitor(period: float = 0.05) -> None:
    """Event-loop lag: once a second, the longest overshoot of a ``period`` sleep, as ``{"lag": s, "t": time}``."""
    worst, since = 0.0, time.monotonic()
    while True:
        start = time.perf_counter()
        await asyncio.sleep(period)
        worst = max(worst, time.perf_counter() - start - period)
        if time.monotonic() - since >= 1.0:
            print(json.dumps({"lag": worst, "t": time.time()}), flush=True)
            worst, since = 0.0, time.monotonic()


async def main(args: argparse.Namespace) -> None:
    config = ManagerConfig.model_validate(json.loads(Path(args.config).read_text()))
    store: KVStore
    if args.etcd:
        host, _, port = args.etcd.rpartition(":")
        store = EtcdStore(host, int(port))
    else:
        store = MemoryStore()
    timer = TickTimer()
    app = build_manager_app(config, store)

    async def instrument(app: web.Application) -> AsyncIterator[None]:
        instrument_sql(app[CTX].engine)
        tasks = [asyncio.create_task(timer.commands(), name="bench-commands"),
                 asyncio.create_task(lag_monitor(), name="bench-lag-monitor")]
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    app.cleanup_ctx.append(instrument)  # after the manager's own context: app[CTX] exists
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, config.manager.listen_host, config.manager.listen_port).start()
    print(json.dumps({"ready": True}), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--etcd", help="HOST:PORT of etcd; default: the in-memory store")
    parser.add_argument("--log", help="log file (INFO, like `moorage manager`); default stderr")
    ns = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        filename=ns.log)
    async def _run() -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await main(ns)

    asyncio.run(_run())
