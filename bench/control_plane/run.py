#!/usr/bin/env python3
"""Control plane at scale: 200 simulated agents, 2,000 endpoints in PostgreSQL; control-loop tick time and API
latency in steady state and under disturbances (loopback only; ~3 minutes on 2 cores when the manager keeps up,
longer when phases time out).

    .venv/bin/python -m bench.control_plane [--agents 200] [--endpoints 2000] [--store etcd|memory] [--keep]
    .venv/bin/python bench/control_plane/run.py       # the same

What runs: a throwaway PostgreSQL database (migrated with alembic, a superadmin keypair); a real etcd when the
binary exists (else the in-memory store); the manager in its own process (``manager_proc.py``: what
``moorage manager`` runs, leader election included, with ``ControlLoop.tick`` and its phases timed by wrapping
them on the class); ``--agents`` simulated agents in this process (``agents.py``: one aiohttp server and port
each, signed RPC verified, the real ``HeartbeatLoop`` every 3 s with the full kernel list; kernels are running
and healthy as soon as they are created); an open-loop API client in a third process (``apiload.py``). The
first ``--api-endpoints`` endpoints are created with ``POST /services`` (a model folder uploaded through
``/folders``) and placed by the manager; the rest are inserted as copies of the first, with their replicas
already running on the agents (``--fill seed``) or placed by the manager (``--fill manager``).

Phases: one steady-state tick under cProfile (not in the table); steady state without and with API load;
``scale`` (200 endpoints rescaled at once through the API: 100 up, 100 down); ``agents lost`` (10 agents stop
heartbeating and close their port; the manager must notice after the heartbeat timeout and re-place their
replicas elsewhere); then a profiled rescale back. A phase that does not converge is reported, and when the
control loop stops ticking the later phases are skipped (with a task dump of the manager in manager.stderr).
Target: every full tick (liveness → reconcile → schedule → publish → terminate) under 1 s. Exit status 0 only
when every phase passes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import platform
import pstats
import random
import secrets
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench._lib.common import PYTHON, REPO, free_port, raise_nofile  # noqa: E402
from bench.control_plane.agents import AgentFleet, fake_ports  # noqa: E402
from common.protocol import KernelReport  # noqa: E402
from common.status import (  # noqa: E402
    EndpointLifecycle,
    KernelStatus,
    RouteHealth,
    RouteLifecycle,
    RouteTraffic,
    UserRole,
)
from common.store import ROUTES_PREFIX, EtcdStore  # noqa: E402
from manager.bootstrap import create_user  # noqa: E402
from manager.db import engine as db_engine  # noqa: E402
from manager.db.models import Endpoint, Route, Session  # noqa: E402
from manager.hmac_auth import sign_request  # noqa: E402
from manager.secretbox import SecretBox  # noqa: E402

HERE = Path(__file__).resolve().parent
TARGET_TICK = 1.0  # seconds, issue #6
AGENT_SLOTS = {"cpu": "32", "mem": str(128 * 1024**3)}
REPLICA_RESOURCES = {"cpu": "1", "mem": "1g"}


# ---------------------------------------------------------------------------------------------------- helpers


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile; NaN for an empty list."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def cpu_ticks(pid: int | None = None) -> float:
    """Seconds of CPU: of one process (utime + stime), or of the whole machine (busy, all cores)."""
    hz = os.sysconf("SC_CLK_TCK")
    if pid is not None:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / hz
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / hz  # minus idle and iowait


class API:
    """Keypair-signed REST client (what the official client sends)."""

    def __init__(self, session: aiohttp.ClientSession, url: str, access: str, secret: str):
        self.session, self.url, self.access, self.secret = session, url, access, secret
        self.host = urlsplit(url).netloc

    async def call(self, method: str, path: str, body: Any = None, form: aiohttp.FormData | None = None) -> Any:
        ct = "multipart/form-data" if form is not None else "application/json"
        headers = sign_request(self.access, self.secret, method, path, self.host, ct)
        if form is not None:
            headers.pop("Content-Type")
        data = form if form is not None else (json.dumps(body).encode() if body is not None else None)
        async with self.session.request(method, self.url + path, data=data, headers=headers) as resp:
            raw = await resp.read()
            if resp.status >= 400:
                raise RuntimeError(f"{method} {path}: HTTP {resp.status}: {raw[:300]!r}")
            return json.loads(raw) if raw else None


@dataclass
class Phase:
    name: str
    start: float
    end: float = 0.0
    note: str = ""
    mgr_cpu: float = 0.0  # manager process CPU seconds in the phase
    machine_cpu: float = 0.0  # busy CPU seconds of the whole machine
    extra: dict[str, Any] = field(default_factory=dict)


class Manager:
    """The manager subprocess: tick records from its stdout, commands on its stdin."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path):
        self.proc = proc
        self.log = log.open("w", buffering=1)  # every record, for a post-mortem with --keep
        self.ticks: list[dict[str, Any]] = []
        self.lags: list[tuple[float, float]] = []  # (wall time, worst event-loop lag in that second)
        self.started: tuple[int, float] = (0, 0.0)  # the last tick that started: number, wall time
        self.ready = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.log.write(line.decode())
            record = json.loads(line)
            if record.get("ready"):
                self.ready.set()
            elif "lag" in record:
                self.lags.append((record["t"], record["lag"]))
            elif "start" in record:
                self.started = (record["start"], record["t"])
            else:
                self.ticks.append(record)

    async def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()

    async def wait_next_tick(self, after: float, timeout: float = 60.0) -> dict[str, Any]:
        """The first tick that started after ``after`` (wall time) and has finished."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for tick in self.ticks:
                if tick["t"] >= after:
                    return tick
            if self.proc.returncode is not None:
                raise RuntimeError("the manager exited; see its log")
            await asyncio.sleep(0.05)
        raise TimeoutError("no control-loop tick")

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self._reader.cancel()
        self.log.close()


# ------------------------------------------------------------------------------------------------------ state


CONVERGENCE_SQL = sa.text("""
    SELECT
      (SELECT count(*) FROM endpoints e WHERE e.lifecycle = 'created' AND e.replicas <> (
         SELECT count(*) FROM routes r WHERE r.endpoint_id = e.id AND r.lifecycle = 'running'
           AND r.health = 'healthy' AND r.traffic = 'active')) AS off_target,
      (SELECT count(*) FROM routes WHERE lifecycle IN ('provisioning', 'terminating')) AS in_flight,
      (SELECT count(*) FROM routes WHERE lifecycle = 'running' AND health = 'healthy') AS healthy,
      (SELECT coalesce(sum(replicas), 0) FROM endpoints WHERE lifecycle = 'created') AS desired,
      (SELECT count(*) FROM agents WHERE status = 'lost') AS lost
""")


async def state(engine: Any) -> dict[str, int]:
    async with engine.connect() as conn:
        return dict((await conn.execute(CONVERGENCE_SQL)).mappings().one())


async def wait_until(engine: Any, done: Callable[[dict[str, int]], bool], timeout: float, what: str,
                     progress: Callable[[str], None] | None = None) -> float:
    """Poll the database every 0.25 s; returns the wall time at which ``done`` first held."""
    start = time.monotonic()
    deadline, report = start + timeout, start + 10
    while True:
        current = await state(engine)
        if done(current):
            return time.time()
        now = time.monotonic()
        if now > deadline:
            raise TimeoutError(f"{what}: not reached after {timeout:.0f}s: {current}")
        if progress is not None and now > report:
            progress(f"  {what} after {now - start:.0f} s: {current}")
            report = now + 10
        await asyncio.sleep(0.25)


def converged(s: dict[str, int]) -> bool:
    return s["off_target"] == 0 and s["in_flight"] == 0


# ------------------------------------------------------------------------------------------------------ setup


async def create_endpoints(api: API, engine: Any, fleet: AgentFleet, args: argparse.Namespace, owner_id: uuid.UUID,
                           progress: Callable[[str], None]) -> list[str]:
    """``--api-endpoints`` endpoints through ``POST /services`` (placed by the manager), the rest inserted as
    copies of the first one. Replicas alternate 1, 2.

    ``--fill seed`` (default) inserts the rest together with their routes and sessions, running and healthy and
    spread over the agents as the ``dispersed`` scheduler would, and gives each simulated agent those kernels: the
    state the manager would have converged to, reached in seconds. ``--fill manager`` inserts only the endpoints,
    ``--batch`` at a time (0: all at once), and waits for the manager to place each batch.
    """
    await api.call("POST", "/folders", {"name": "bench-model"})
    form = aiohttp.FormData()
    definition = (REPO / "configs/models/echo/model-definition.yaml").read_bytes()
    form.add_field("file", definition, filename="model-definition.yaml")
    await api.call("POST", "/folders/bench-model/files", form=form)
    ids: list[str] = []
    for i in range(args.api_endpoints):
        info = await api.call("POST", "/services", {
            "name": f"bench-api-{i:04d}", "replicas": 1 + i % 2,
            "config": {"model": "bench-model", "resources": REPLICA_RESOURCES}})
        ids.append(info["endpoint_id"])
    await wait_until(engine, converged, 120, "placement of the API-created endpoints", progress)
    sessionmaker = db_engine.make_sessionmaker(engine)
    async with sessionmaker() as db:
        template = await db.get(Endpoint, uuid.UUID(ids[0]))
        assert template is not None
        base = {c.key: getattr(template, c.key) for c in sa.inspect(Endpoint).column_attrs}
        used_ports = set((await db.execute(sa.select(Endpoint.proxy_port))).scalars())
    ports = (p for p in range(10300, 20000) if p not in used_ports)
    rows = []
    for i in range(args.api_endpoints, args.endpoints):
        port = next(ports)
        rows.append({**base, "id": uuid.uuid4(), "name": f"bench-{i:04d}", "replicas": 1 + i % 2,
                     "proxy_port": port, "url": f"http://127.0.0.1:{port}", "owner_id": owner_id,
                     "created_at": datetime.now(UTC)})
        ids.append(str(rows[-1]["id"]))
    if args.fill == "seed":
        await seed(sessionmaker, fleet, rows)
        return ids
    step = args.batch or len(rows) or 1
    for first in range(0, len(rows), step):
        async with sessionmaker() as db:
            await db.execute(sa.insert(Endpoint), rows[first:first + step])
            await db.commit()
        await wait_until(engine, converged, 900, "placement", progress)
    return ids


async def seed(sessionmaker: Any, fleet: AgentFleet, rows: list[dict[str, Any]]) -> None:
    """Insert endpoints with running, healthy replicas (route + session each), then hand the kernels to the
    agents (after the commit, so no heartbeat reports a kernel the database does not know yet)."""
    now = datetime.now(UTC)
    routes, sessions, kernels = [], [], []
    slot = 0
    for row in rows:
        for _ in range(row["replicas"]):
            agent = fleet.agents[slot % len(fleet.agents)]
            slot += 1
            route_id, session_id, port = uuid.uuid4(), uuid.uuid4(), next(fake_ports)
            sessions.append({"id": session_id, "endpoint_id": row["id"], "route_id": route_id,
                             "agent_id": agent.agent_id, "runtime_handle": "sim", "host": "127.0.0.1", "port": port,
                             "occupied_slots": row["resource_slots"], "status": "running",
                             "status_history": [{"status": "running", "at": now.isoformat()}], "created_at": now})
            routes.append({"id": route_id, "endpoint_id": row["id"], "session_id": session_id,
                           "lifecycle": RouteLifecycle.RUNNING, "health": RouteHealth.HEALTHY,
                           "traffic": RouteTraffic.ACTIVE, "traffic_ratio": 1.0, "revision": row.get("revision", 1),
                           "created_at": now, "updated_at": now})
            kernels.append((agent, KernelReport(
                kernel_id=session_id, endpoint_id=row["id"], route_id=route_id, status=KernelStatus.RUNNING,
                health=RouteHealth.HEALTHY, host="127.0.0.1", port=port, handle="sim", started_at=now.timestamp(),
                updated_at=now.timestamp())))
    async with sessionmaker() as db:
        for table, values in ((Endpoint, rows), (Session, sessions), (Route, routes)):
            for first in range(0, len(values), 1000):
                await db.execute(sa.insert(table), values[first:first + 1000])
        await db.commit()
    for agent, report in kernels:
        agent.kernels[report.kernel_id] = report


async def start_manager(tmp: Path, db_url: str, etcd: str | None, args: argparse.Namespace) -> tuple[Manager, str]:
    port = free_port()
    config = {
        "manager": {"listen_host": "127.0.0.1", "listen_port": port, "storage_root": str(tmp / "storage")},
        "db": {"url": db_url},
        "appproxy": {"port_range": [10300, 19999]},
        "secrets": {"cluster_secret": args.cluster_secret, "jwt_secret": secrets.token_hex(16),
                    "keypair_encryption_key": args.keypair_key},
        "reconcile": {"interval": args.interval, "agent_heartbeat_timeout": args.heartbeat_timeout},
    }
    (tmp / "manager.json").write_text(json.dumps(config))
    cmd = [PYTHON, str(HERE / "manager_proc.py"), "--config", str(tmp / "manager.json"),
           "--log", str(tmp / "manager.log")] + (["--etcd", etcd] if etcd else [])
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=open(tmp / "manager.stderr", "wb"), cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    manager = Manager(proc, tmp / "ticks.jsonl")
    await asyncio.wait_for(manager.ready.wait(), 60)
    return manager, f"http://127.0.0.1:{port}"


# ----------------------------------------------------------------------------------------------------- report


def log_times(log: Path, matches: Callable[[str], bool]) -> list[float]:
    """Wall times of the manager's log lines that ``matches`` accepts."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if matches(line):
            with contextlib.suppress(ValueError):
                out.append(datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return out


def step_downs(log: Path) -> list[float]:
    """Wall times at which the manager stopped its control loops because it lost leadership (from its log)."""
    return log_times(log, lambda line: "steps down" in line and "shutting down" not in line)


def agents_marked_lost(log: Path) -> list[float]:
    """Wall times at which the manager declared an agent lost (a healthy agent declared lost is the cascade to
    watch for: its replicas are replaced, which loads the manager further)."""
    return log_times(log, lambda line: " lost (no heartbeat since " in line)


def tick_stats(ticks: list[dict[str, Any]]) -> dict[str, Any]:
    """Durations of all ticks that started in the window; a tick cancelled half-way counts with the time it had
    run (a lower bound of what it would have taken)."""
    durs = [t["dur"] for t in ticks]
    cancelled = sum(1 for t in ticks if t.get("error") == "cancelled")
    return {"n": len(durs), "cancelled": cancelled, "p50": pct(durs, 0.5), "max": max(durs, default=math.nan),
            "sql": sum(t["sql"] for t in ticks) / len(ticks) if ticks else math.nan}


def latency_ms(records: list[tuple[float, str, float, str]], kind: str, start: float, end: float) -> dict[str, float]:
    values = [lat for t, k, lat, _ in records if k == kind and start <= t < end]
    errors = sum(1 for t, k, _, status in records if k == kind and start <= t < end and status != "200")
    return {"n": len(values), "p50": 1000 * pct(values, 0.5), "p99": 1000 * pct(values, 0.99),
            "max": 1000 * max(values, default=math.nan), "errors": errors}


def fmt(value: float, spec: str = ".3f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def print_table(phases: list[Phase], ticks: list[dict[str, Any]], api: list[tuple[float, str, float, str]],
                fleet: AgentFleet, lags: list[tuple[float, float]], downs: list[float], marked_lost: list[float],
                killed: int) -> bool:
    print(f"{'phase':<16} {'secs':>4} {'ticks':>5} {'tick p50':>8} {'tick max':>8} {'sql/tick':>8} {'mgr CPU':>7} "
          f"{'lag max':>7} {'GET p50':>7} {'GET p99':>7} {'list p50':>8} {'list p99':>8} {'hb p99':>6} "
          f"{'hb fail':>7} {'API err':>7} {'lead lost':>9} {'ag lost':>7}  result")
    ok_all = True
    for ph in phases:
        window = [t for t in ticks if ph.start <= t["t"] < ph.end and not t["profiled"]]
        st = tick_stats(window)
        get, lst = latency_ms(api, "get", ph.start, ph.end), latency_ms(api, "list", ph.start, ph.end)
        hb = [lat for t, lat in fleet.heartbeat_latencies if ph.start <= t < ph.end]
        hb_fail = sum(1 for t in fleet.heartbeat_failures if ph.start <= t < ph.end)
        lag = max((lag for t, lag in lags if ph.start <= t < ph.end), default=math.nan)
        lost = sum(1 for t in downs if ph.start <= t < ph.end)
        agents_lost = sum(1 for t in marked_lost if ph.start <= t < ph.end)
        expected_lost = killed if ph.name.endswith("agents lost") else 0  # (the phase that kills agents)
        ok = st["max"] < TARGET_TICK and lost == 0 and st["n"] > 0 and agents_lost <= expected_lost
        ok_all &= ok
        secs = ph.end - ph.start
        n = f"{st['n']}" + (f"/{st['cancelled']}c" if st["cancelled"] else "")
        print(f"{ph.name:<16} {secs:>4.0f} {n:>5} {fmt(st['p50']):>8} {fmt(st['max']):>8} "
              f"{fmt(st['sql'], '.0f'):>8} {100 * ph.mgr_cpu / secs:>6.0f}% {fmt(1000 * lag, '.0f'):>7} "
              f"{fmt(get['p50'], '.1f'):>7} {fmt(get['p99'], '.1f'):>7} {fmt(lst['p50'], '.0f'):>8} "
              f"{fmt(lst['p99'], '.0f'):>8} {fmt(1000 * pct(hb, 0.99), '.0f'):>6} {hb_fail:>7} "
              f"{get['errors'] + lst['errors']:>7} {lost:>9} {agents_lost:>7}  "
              f"{'PASS' if ok else 'FAIL'}")
        ph.extra.update(get=get, list=lst)
    print(f"target: every full tick (liveness → reconcile → schedule → publish → terminate) < {TARGET_TICK:.0f} s, "
          f"leadership never lost and no live agent declared lost -> {'PASS' if ok_all else 'FAIL'}. "
          f"Times in s, latencies in ms: GET = GET /services/{{id}}, list = GET /services (all endpoints), "
          f"hb = agent heartbeat round trip; lag = worst "
          f"event-loop stall of the manager; mgr CPU: 100% = one core; hb fail / API err = failed heartbeats / API "
          f"requests (not 200); lead lost = leader step-downs (etcd lease); ag lost = agents declared lost (only "
          f"the 'agents lost' phase may have any, at most the ones it killed); ticks N/Mc: M of N cancelled half-way "
          f"(counted with the time they had run)")
    return ok_all


def print_phase_breakdown(phases: list[Phase], ticks: list[dict[str, Any]]) -> None:
    names: list[str] = []
    for t in ticks:
        names += [n for n in t["phases"] if n not in names]
    print("mean seconds per tick and phase (wall time inside each ControlLoop method; publish runs twice):")
    print(f"  {'phase':<16} " + " ".join(f"{n[:18]:>18}" for n in names) + f" {'SQL time':>9}")
    for ph in phases:
        window = [t for t in ticks if ph.start <= t["t"] < ph.end and not t["profiled"]]
        if not window:
            continue
        means = [sum(t["phases"].get(n, 0.0) for t in window) / len(window) for n in names]
        sql = sum(t["sql_time"] for t in window) / len(window)
        print(f"  {ph.name:<16} " + " ".join(f"{m:>18.3f}" for m in means) + f" {sql:>9.3f}")


def print_profile(directory: Path, ticks: list[dict[str, Any]], top: int) -> None:
    profiled = [t for t in ticks if t["profiled"] and (directory / f"tick-{t['n']}.prof").exists()]
    if not profiled:
        print("profile: no profiled tick")
        return
    steady = min(profiled, key=lambda t: t["n"])
    chosen = [("steady-state tick", steady)]
    rest = [t for t in profiled if t is not steady]
    if rest:
        chosen.append(("busiest tick of the profiled rescale", max(rest, key=lambda t: t["dur"])))
    for label, tick in chosen:
        stats = pstats.Stats(str(directory / f"tick-{tick['n']}.prof"))
        extra = json.loads((directory / f"tick-{tick['n']}.json").read_text())
        coroutines = {tuple(c) for c in extra["coroutines"]}
        entries = stats.stats  # type: ignore[attr-defined]  # pstats.Stats.stats is undocumented but stable
        wall = tick["dur"]
        phases = ", ".join(f"{k} {v:.3f}" for k, v in tick["phases"].items())
        print(f"\n{label}: {wall:.3f} s wall under cProfile (process CPU {tick['cpu']:.3f} s; {tick['sql']} SQL "
              f"statements, {tick['sql_time']:.3f} s until their results); per phase: {phases}")
        print("  (the profile covers the whole manager process during the tick: heartbeats and API requests that "
              "ran meanwhile are included; % of the tick's wall time)")

        def where(key: tuple[str, int, str]) -> str:
            path, line, func = key
            with contextlib.suppress(ValueError):
                path = str(Path(path).relative_to(REPO))
            path = path.split("site-packages/")[-1].split("lib/python3.11/")[-1]
            return f"{path}:{line} {func}"

        print("  self time (tottime):")
        for key, (_cc, nc, tt, _ct, _callers) in sorted(entries.items(), key=lambda kv: -kv[1][2])[:top]:
            print(f"    {100 * tt / wall:5.1f}%  {tt:7.3f} s  {nc:>8} calls  {where(key)[:110]}")
        print("  inclusive time of project functions that are not coroutines (plain Python work):")
        own = [(k, v) for k, v in entries.items() if str(REPO) in k[0] and "/.venv/" not in k[0]
               and "/bench/" not in k[0] and k not in coroutines]
        for key, (_cc, nc, _tt, ct, _callers) in sorted(own, key=lambda kv: -kv[1][3])[:top]:
            print(f"    {100 * ct / wall:5.1f}%  {ct:7.3f} s  {nc:>8} calls  {where(key)[:110]}")
        print("  SQL issued by the tick, by time until the result (count, seconds, statement):")
        for text, (count, spent) in sorted(extra["sql"].items(), key=lambda kv: -kv[1][1])[:8]:
            print(f"    {count:>6} {spent:7.3f} s  {text[:120]}")


# -------------------------------------------------------------------------------------------------------- run


class Bench:
    """The measured phases; a phase that does not converge in time is reported, not fatal."""

    def __init__(self, args: argparse.Namespace, tmp: Path, engine: Any, manager: Manager, fleet: AgentFleet,
                 client: API) -> None:
        self.args, self.tmp, self.engine = args, tmp, engine
        self.manager, self.fleet, self.client = manager, fleet, client
        self.phases: list[Phase] = []
        self.problems: list[str] = []
        self.stalled = False
        self.rng = random.Random(6)

    def begin(self, name: str) -> Phase:
        ph = Phase(name, time.time())
        ph.mgr_cpu, ph.machine_cpu = -cpu_ticks(self.manager.proc.pid), -cpu_ticks()
        return ph

    def end(self, ph: Phase) -> None:
        ph.end = time.time()
        ph.mgr_cpu += cpu_ticks(self.manager.proc.pid)
        ph.machine_cpu += cpu_ticks()
        self.phases.append(ph)

    async def settle(self, what: str, done: Callable[[dict[str, int]], bool], timeout: float) -> float | None:
        """Wall time at which ``done`` held, or None (recorded as a problem; checks whether the loop still ticks)."""
        try:
            return await wait_until(self.engine, done, timeout, what, lambda line: print(line, flush=True))
        except TimeoutError as exc:
            self.problems.append(str(exc))
        n, started = self.manager.started
        if not self.manager.ticks or self.manager.ticks[-1]["n"] != n:
            self.problems.append(f"{what}: tick {n} has been running for {time.time() - started:.0f} s")
            return None
        last = max((t["t"] + t["dur"] for t in self.manager.ticks), default=0.0)
        if time.time() - last > max(30.0, 10 * self.args.interval):
            self.stalled = True
            await self.manager.send("tasks")  # where every task of the manager waits, into manager.stderr
            await asyncio.sleep(1)
            self.problems.append(f"the control loop has not ticked for {time.time() - last:.0f} s and no tick is "
                                 f"running (leader, but no loop?); task dump in manager.stderr; later phases skipped")
            self.args.keep = True
        return None

    async def rescale(self, targets: list[tuple[str, int]]) -> tuple[list[float], list[str]]:
        """Concurrent ``POST /services/{id}/scale``: latencies and the errors of those that failed."""
        async def one(eid: str, to: int) -> float | str:
            start = time.perf_counter()
            try:
                await self.client.call("POST", f"/services/{eid}/scale", {"to": to})
            except Exception as exc:  # noqa: BLE001 - counted and reported
                return str(exc)[:160]
            return time.perf_counter() - start
        results = await asyncio.gather(*(one(e, n) for e, n in targets))
        return [r for r in results if isinstance(r, float)], [r for r in results if isinstance(r, str)]

    async def steady(self, name: str) -> None:
        print(f"{name}: {self.args.steady:.0f} s ...", flush=True)
        ph = self.begin(name)
        await asyncio.sleep(self.args.steady)
        self.end(ph)

    async def scale(self) -> tuple[list[str], list[str]]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.text(
                "SELECT id, replicas FROM endpoints WHERE lifecycle = 'created'"))).all()
        n = self.args.scale
        up = self.rng.sample([str(r.id) for r in rows if r.replicas == 1], n // 2)
        down = self.rng.sample([str(r.id) for r in rows if r.replicas == 2], n - n // 2)
        print(f"scale: {n} endpoints at once ({len(up)} up 1→2, {len(down)} down 2→1) ...", flush=True)
        ph = self.begin(f"scale {n}")
        latencies, failed = await self.rescale([(e, 2) for e in up] + [(e, 1) for e in down])
        if failed:
            self.problems.append(f"{len(failed)} of {n} scale requests failed, e.g. {failed[0]}")
        t_target = await self.settle("rescale", lambda s: s["off_target"] == 0, 90)
        t_done = await self.settle("drain", converged, 60) if t_target else None
        ph.note = (f"every endpoint at its new replica count (running, healthy, in traffic) after "
                   f"{fmt(t_target - ph.start if t_target else math.nan, '.1f')} s, drained replicas stopped after "
                   f"{fmt(t_done - ph.start if t_done else math.nan, '.1f')} s (drain grace); scale requests p50 "
                   f"{fmt(1000 * pct(latencies, 0.5), '.0f')} ms, max "
                   f"{fmt(1000 * max(latencies, default=math.nan), '.0f')} ms")
        if not self.stalled:
            await self.manager.wait_next_tick(time.time())
        self.end(ph)
        return up, down

    async def agents_lost(self) -> None:
        victims = self.rng.sample(self.fleet.alive(), self.args.kill)
        kernels = sum(len(a.kernels) for a in victims)
        print(f"agents lost: stopping {len(victims)} agents ({kernels} replicas) ...", flush=True)
        ph = self.begin(f"{len(victims)} agents lost")
        await asyncio.gather(*(a.stop() for a in victims))
        t_lost = await self.settle("agents lost", lambda s: s["lost"] >= len(victims),
                                   self.args.heartbeat_timeout + 45)
        t_done = await self.settle("replacement", converged, 90) if t_lost else None
        ph.note = (f"{kernels} replicas on {len(victims)} agents: marked lost after "
                   f"{fmt(t_lost - ph.start if t_lost else math.nan, '.1f')} s (heartbeat timeout "
                   f"{self.args.heartbeat_timeout:g} s), all replaced "
                   f"{fmt(t_done - t_lost if t_done and t_lost else math.nan, '.1f')} s later")
        if not self.stalled:
            await self.manager.wait_next_tick(time.time())
        self.end(ph)

    async def profile_steady(self) -> None:
        """cProfile one steady-state tick (not in the table)."""
        print("profile: one steady-state tick under cProfile (not in the table) ...", flush=True)
        await self.manager.send(f"profile {self.tmp / 'profile'}")
        tick = await self.manager.wait_next_tick(time.time(), timeout=300)
        await self.manager.send("noprofile")
        await self.manager.wait_next_tick(tick["t"] + tick["dur"], timeout=300)

    async def profile(self, up: list[str], down: list[str]) -> None:
        print("profile: cProfile on the manager's ticks while rescaling back (not in the table) ...", flush=True)
        await self.manager.send(f"profile {self.tmp / 'profile'}")
        await self.manager.wait_next_tick(time.time())
        _, failed = await self.rescale([(e, 1) for e in up] + [(e, 2) for e in down])
        if failed:
            self.problems.append(f"profile phase: {len(failed)} scale requests failed")
        await self.settle("profiled rescale", converged, 120)
        if not self.stalled:
            await self.manager.wait_next_tick(time.time() + 1.5)
        await self.manager.send("noprofile")


async def measure(args: argparse.Namespace, db_url: str, etcd: str | None, tmp: Path) -> int:
    engine = db_engine.make_engine(db_url)
    await db_engine.upgrade(db_url)
    args.keypair_key = secrets.token_urlsafe(32)  # the manager started below must open the keypair sealed here
    user_id, access, secret = await create_user(db_engine.make_sessionmaker(engine), "bench@moorage.local",
                                                UserRole.SUPERADMIN, box=SecretBox(args.keypair_key))
    args.cluster_secret = secrets.token_hex(16)
    manager, url = await start_manager(tmp, db_url, etcd, args)
    fleet = AgentFleet(args.agents, args.cluster_secret, url, args.heartbeat_interval, AGENT_SLOTS)
    loadgen: asyncio.subprocess.Process | None = None
    api_records: list[tuple[float, str, float, str]] = []
    published = "not checked"
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64),
                                         timeout=aiohttp.ClientTimeout(total=120)) as session:
            bench = Bench(args, tmp, engine, manager, fleet, API(session, url, access, secret))
            print(f"starting {args.agents} agents ...", flush=True)
            await fleet.start()
            async with engine.connect() as conn:
                for _ in range(200):
                    alive = (await conn.execute(sa.text("SELECT count(*) FROM agents WHERE status = 'alive'")))
                    if alive.scalar_one() == args.agents:
                        break
                    await asyncio.sleep(0.25)
            how = ("seeded as running" if args.fill == "seed" else
                   f"placed by the manager, {'all at once' if not args.batch else f'{args.batch} at a time'}")
            print(f"creating {args.endpoints} endpoints ({args.api_endpoints} via POST /services, the rest "
                  f"inserted; replicas {how}) ...", flush=True)
            t_create = time.time()
            ids = await create_endpoints(bench.client, engine, fleet, args, user_id,
                                         lambda line: print(line, flush=True))
            desired = (await state(engine))["desired"]
            t_filled = await bench.settle("settling", converged, 120) or time.time()
            await manager.wait_next_tick(time.time(), timeout=300)  # the first full republish is behind us
            await bench.profile_steady()

            await bench.steady("steady")
            (tmp / "ids.txt").write_text("\n".join(ids))
            loadgen = await asyncio.create_subprocess_exec(
                PYTHON, str(HERE / "apiload.py"), f"--url={url}", f"--access-key={access}",
                f"--secret-key={secret}", f"--ids={tmp / 'ids.txt'}", f"--get-rate={args.get_rate}",
                f"--list-rate={args.list_rate}", stdout=asyncio.subprocess.PIPE, cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)})

            async def read_load() -> None:
                assert loadgen is not None and loadgen.stdout is not None
                while line := await loadgen.stdout.readline():
                    t, kind, lat, status = line.decode().split()
                    api_records.append((float(t), kind, float(lat), status))

            load_reader = asyncio.create_task(read_load())
            await asyncio.sleep(2)  # connections, first requests
            await bench.steady("steady + API")
            if loadgen.returncode is not None:
                bench.problems.append(f"the API load generator exited with {loadgen.returncode}")
            up, down = await bench.scale()
            if not bench.stalled:
                await bench.agents_lost()
            if loadgen.returncode is None:
                loadgen.terminate()
            await loadgen.wait()
            await load_reader
            if not bench.stalled:
                published = await check_published(etcd, engine)  # what the app proxies read == the database?
                await bench.profile(up, down)
    finally:
        if loadgen is not None and loadgen.returncode is None:
            loadgen.terminate()
            await loadgen.wait()
        await fleet.close()
        await manager.stop()
        await engine.dispose()

    ticks = manager.ticks
    downs = step_downs(tmp / "manager.log")
    print()
    print(f"machine: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}; "
          f"store: {'etcd ' + etcd if etcd else 'in-memory (no etcd binary)'}; PostgreSQL on 127.0.0.1")
    print(f"setup: {args.agents} agents (real aiohttp servers, one port each, heartbeat every "
          f"{args.heartbeat_interval:g} s), {args.endpoints} endpoints ({args.api_endpoints} via POST /services), "
          f"{desired} replicas; manager in its own process (leader election on the store), tick interval "
          f"{args.interval:g} s")
    if args.fill == "manager":
        fst = tick_stats([t for t in ticks if t_create <= t["t"] < t_filled])
        fill_lag = max((lag for t, lag in manager.lags if t_create <= t < t_filled), default=math.nan)
        fill_hb = sum(1 for t in fleet.heartbeat_failures if t_create <= t < t_filled)
        print(f"initial placement by the manager ({'all at once' if not args.batch else f'batches of {args.batch}'}"
              f"): {desired} replicas running and healthy after {t_filled - t_create:.1f} s; {fst['n']} ticks, "
              f"longest {fmt(fst['max'])} s, worst loop stall {fmt(fill_lag)} s, {fill_hb} failed heartbeats, "
              f"{sum(1 for t in downs if t_create <= t < t_filled)} leader step-downs (not part of the target)")
    else:
        print(f"replicas of the inserted endpoints seeded as running on the agents (--fill manager: placed by the "
              f"manager instead); set-up took {t_filled - t_create:.1f} s")
    ok = print_table(bench.phases, ticks, api_records, fleet, manager.lags, downs,
                     agents_marked_lost(tmp / "manager.log"), args.kill)
    for ph in bench.phases:
        if ph.note:
            print(f"  {ph.name}: {ph.note}")
    for problem in bench.problems:
        print(f"  PROBLEM: {problem}")
    cancelled = [t for t in ticks if t.get("error") == "cancelled"]
    if cancelled:
        print(f"  ticks cancelled half-way by a leader step-down: {len(cancelled)}")
    resync = [t for p in bench.phases for t in ticks if p.start <= t["t"] < p.end and not t["profiled"]
              and t["phases"].get("publish", 0) > 0.5 * t["dur"]]
    if resync:
        print(f"  ticks more than half spent in publish (dirty tables plus one resync slice): {len(resync)}, "
              f"{', '.join(format(t['dur'], '.3f') for t in resync[:6])} s")
    busy = sum(p.machine_cpu for p in bench.phases) / sum(p.end - p.start for p in bench.phases)
    print(f"  machine CPU busy during the measured phases: {100 * busy / (os.cpu_count() or 1):.0f}% of "
          f"{os.cpu_count()} cores (manager, PostgreSQL, etcd, agents and API client share them)")
    print(f"  route tables in the store vs database after the disturbances: {published}")
    print()
    print_phase_breakdown(bench.phases, ticks)
    print_profile(tmp / "profile", ticks, args.top)
    return 0 if ok and not bench.problems else 1


async def check_published(etcd: str | None, engine: Any) -> str:
    if not etcd:
        return "not checked (in-memory store lives in the manager process)"
    host, _, port = etcd.rpartition(":")
    store = EtcdStore(host, int(port))
    await asyncio.sleep(2.5)  # one more tick publishes the last heartbeat changes
    try:
        tables = await store.get_prefix(ROUTES_PREFIX)
    finally:
        await store.close()
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.text(
            "SELECT e.id, r.id FROM endpoints e LEFT JOIN routes r ON r.endpoint_id = e.id AND r.lifecycle = "
            "'running' AND r.health = 'healthy' AND r.traffic = 'active' WHERE e.lifecycle = :c"),
            {"c": EndpointLifecycle.CREATED.value})).all()
    want: dict[str, set[str]] = {}
    for eid, rid in rows:
        want.setdefault(str(eid), set()).update([str(rid)] if rid else [])
    wrong = []
    for eid, routes in want.items():
        table = json.loads(tables.get(ROUTES_PREFIX + eid, '{"routes": []}'))
        have = {r["route_id"] for r in table["routes"]}
        if have != routes:
            wrong.append(f"{eid}: store {len(have)} routes, db {len(routes)} ({len(have & routes)} common)")
    return (f"{len(tables)} tables, {len(want) - len(wrong)} of {len(want)} endpoints match"
            + (f"; e.g. {'; '.join(wrong[:3])}" if wrong else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--endpoints", type=int, default=2000)
    parser.add_argument("--api-endpoints", type=int, default=20, help="how many are created with POST /services")
    parser.add_argument("--store", choices=["auto", "etcd", "memory"], default="auto",
                        help="route-table store of the manager (auto: etcd when the binary exists)")
    parser.add_argument("--steady", type=float, default=20.0, help="seconds of each steady-state phase")
    parser.add_argument("--scale", type=int, default=200, help="endpoints rescaled at once")
    parser.add_argument("--kill", type=int, default=10, help="agents that die")
    parser.add_argument("--get-rate", type=float, default=20.0, help="GET /services/{id} per second")
    parser.add_argument("--list-rate", type=float, default=0.1, help="GET /services (all endpoints) per second")
    parser.add_argument("--interval", type=float, default=2.0, help="[reconcile] interval of the manager")
    parser.add_argument("--heartbeat-interval", type=float, default=3.0, help="agent heartbeat interval")
    parser.add_argument("--heartbeat-timeout", type=float, default=15.0, help="[reconcile] agent_heartbeat_timeout")
    parser.add_argument("--fill", choices=["seed", "manager"], default="seed",
                        help="seed: insert the replicas as running (seconds); manager: let the manager place them")
    parser.add_argument("--batch", type=int, default=250, help="with --fill manager: endpoints inserted at a time, "
                        "each batch placed before the next (0: all at once, a stress test of its own)")
    parser.add_argument("--top", type=int, default=12, help="profile lines per list")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (manager log, profiles)")
    args = parser.parse_args()
    raise_nofile()
    logging.getLogger("agent.heartbeat").setLevel(logging.ERROR)  # failures are counted and reported instead
    from tests.services import EtcdServer, postgres_database

    etcd_server = None
    if args.store == "etcd" or (args.store == "auto" and (shutil.which("etcd") or os.path.exists("/usr/bin/etcd"))):
        etcd_server = EtcdServer()
        etcd_server.start()
    tmp = Path(tempfile.mkdtemp(prefix="moorage-bench-cp-"))
    try:
        with postgres_database() as db_url:
            etcd = f"127.0.0.1:{etcd_server.client_port}" if etcd_server else None
            return asyncio.run(measure(args, db_url, etcd, tmp))
    finally:
        if etcd_server is not None:
            etcd_server.close()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
