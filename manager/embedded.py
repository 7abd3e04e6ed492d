"""Embedded mode (``moorage up``): manager, one agent and one app proxy on one event loop.

Same code paths as the cluster, wired differently (docs/architecture.md, Embedded mode): SQLite instead of
PostgreSQL, the in-memory store instead of etcd, the ``local`` runtime. Everything lives under ``data_dir``:
``moorage.db``, ``storage/`` (model folders), ``agent/`` (replica work dirs), ``secrets.json`` and
``cluster.json`` (manager URL + admin keypair; the CLI reads it by default), ``moorage.log`` (``--detach``).

File modes: the data dir is 0700 and everything Moorage writes directly in it is 0600 (the process umask is 077,
see common/fileperms.py), because the database holds keypairs and secrets.json the keys that protect them. The
exception is the inside of ``storage/``: model folders are 0755 and their files 0644, since replicas (run by the
sandbox as an unprivileged uid) must read them. Those replicas never walk through the 0700 data dir: the agent,
which runs as the data dir's owner, binds the folder path itself into the sandbox. Other users therefore cannot
reach the models either, only the replicas that are given a folder can.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
from pathlib import Path
from typing import Any

from aiohttp import web

from common.aio import stop_on_signals
from common.fileperms import drop_group_and_other
from manager.context import CTX

log = logging.getLogger("moorage.embedded")
CLUSTER_FILE = "cluster.json"
SECRETS_FILE = "secrets.json"
DB_FILE = "moorage.db"
LOG_FILE = "moorage.log"
# Files directly in the data dir that hold secrets or data (SQLite's -wal/-shm/-journal copy the database's mode
# when SQLite creates them, but ones left by an older install keep theirs, so they are checked too).
PRIVATE_FILES = (DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm", f"{DB_FILE}-journal", SECRETS_FILE, CLUSTER_FILE,
                 LOG_FILE, "secrets.tmp", "cluster.tmp")


def secure_data_dir(data_dir: Path) -> int:
    """Create the data dir 0700, or take group/other access away from an existing one and from the known files
    in it (an install from before these modes were enforced); each change is logged. Returns how many changed.
    ``storage/`` and ``agent/`` keep their own modes (see the module docstring)."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    changed = int(drop_group_and_other(data_dir, log, "data dir"))
    for name in PRIVATE_FILES:
        changed += drop_group_and_other(data_dir / name, log, "file")
    return changed


def _write_private(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    os.replace(tmp, path)


SECRET_NAMES = ("cluster_secret", "jwt_secret", "keypair_encryption_key")


def load_or_create_secrets(data_dir: Path) -> dict[str, str]:
    """secrets.json: generated on first start; a secret added by a later version (keypair_encryption_key) is
    generated into an existing file, keeping the others."""
    path = data_dir / SECRETS_FILE
    values: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    missing = [name for name in SECRET_NAMES if not values.get(name)]
    if missing:
        values.update({name: secrets.token_urlsafe(32) for name in missing})
        _write_private(path, values)
        if len(missing) < len(SECRET_NAMES):
            log.info("added %s to %s", ", ".join(missing), path)
    return values


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


async def run_embedded(data_dir: Path, host: str = "127.0.0.1", port: int = 8090,
                       proxy_port_range: tuple[int, int] = (10300, 10399), ready: asyncio.Event | None = None,
                       stop: asyncio.Event | None = None, gateway_port: int | None = None,
                       console_port: int = 8091) -> None:
    from agent.config import load_agent_config
    from agent.server import AGENT_KEY, build_agent_app
    from appproxy.config import ProxyConfig
    from appproxy.server import AppProxy
    from common.store import MemoryStore
    from manager.bootstrap import ensure_admin
    from manager.config import ManagerConfig

    data_dir = data_dir.resolve()
    secure_data_dir(data_dir)
    secret_values = load_or_create_secrets(data_dir)
    manager_url = f"http://{host}:{port}"
    mcfg = ManagerConfig.model_validate({
        "manager": {"listen_host": host, "listen_port": port, "storage_root": str(data_dir / "storage"),
                    "auto_migrate": True},
        "db": {"url": f"sqlite+aiosqlite:///{data_dir / DB_FILE}"},
        "appproxy": {"public_host": host, "port_range": list(proxy_port_range)},
        "secrets": {"cluster_secret": secret_values["cluster_secret"], "jwt_secret": secret_values["jwt_secret"],
                    "keypair_encryption_key": secret_values["keypair_encryption_key"]},
        # one machine, one user: free a drained replica's memory quickly rather than wait out long streams
        "reconcile": {"interval": 1.0, "drain_grace": 3.0},
        "console": {"listen_host": host, "listen_port": console_port},
    })
    agent_port = _free_port(host)
    acfg = load_agent_config(None, overrides={
        "agent": {"id": "embedded", "listen_host": host, "listen_port": agent_port, "replica_host": host,
                  "state_dir": str(data_dir / "agent"), "storage_root": str(data_dir / "storage"),
                  "manager_url": manager_url},
        "secrets": {"cluster_secret": secret_values["cluster_secret"]},
        "resources": {"reserved_mem": "0"},
    })
    # the admin listener (any free port, loopback) gives the manager each endpoint's traffic and replica metrics:
    # the autoscaler's inputs and the console's charts; the gateway counts rate limits in this process (one proxy)
    pcfg = ProxyConfig.model_validate({"proxy": {"bind_host": host, "admin_host": host, "admin_port": 0},
                                       "secrets": {"jwt_secret": secret_values["jwt_secret"],
                                                   "cluster_secret": secret_values["cluster_secret"]},
                                       "gateway": {"host": host, "port": gateway_port}})
    store = MemoryStore()
    from manager.server import build_manager_app, start_manager_site

    manager_app = build_manager_app(mcfg, store)
    agent_app = build_agent_app(acfg)
    agent_runner = web.AppRunner(agent_app, access_log=None)
    async def record_gateway_usage(records: Any) -> None:  # the gateway's usage, straight into this manager's DB
        from manager.usage import record_and_publish

        await record_and_publish(manager_app[CTX], records)

    proxy = AppProxy(pcfg, store, usage_sink=record_gateway_usage)
    from manager.console.app import start_console_site
    from manager.console.links import console_url, login_link_url

    manager_runner = await start_manager_site(manager_app, mcfg)  # loopback, plain HTTP (one machine)
    console_runner: web.AppRunner | None = None
    try:
        await agent_runner.setup()
        await web.TCPSite(agent_runner, host, agent_port).start()
        await proxy.start()
        ctx = manager_app[CTX]
        access_key, secret_key = await ensure_admin(ctx.db, ctx.keypair_box)
        gateway_url = proxy.gateway.url if proxy.gateway is not None else None
        console_runner = await start_console_site(ctx)
        login_url = await login_link_url(ctx, access_key)  # single use, valid for [console] login_link_ttl
        _write_private(data_dir / CLUSTER_FILE, {
            "manager_url": manager_url, "access_key": access_key, "secret_key": secret_key,
            "console_url": console_url(mcfg), "console_login_url": login_url,
            "data_dir": str(data_dir), "pid": os.getpid(), "mode": "embedded", "gateway_url": gateway_url})
        gateway = (f"  gateway (OpenAI-compatible): {gateway_url}  (API keys: moorage key create NAME)\n"
                   if gateway_url else "")
        print(f"Moorage is up (embedded mode). Manager: {manager_url}\n"
              f"  console: {login_url}\n"
              f"           (a one-time login link, valid {mcfg.console.login_link_ttl / 60:g} minutes; later: "
              f"log in at {console_url(mcfg)} with the keys in the connection file)\n"
              f"  connection file: {data_dir / CLUSTER_FILE} (the moorage CLI reads it by default)\n"
              f"{gateway}"
              f"  try: moorage folder create mymodel && moorage folder upload mymodel ./my-model-dir\n"
              f"       moorage service create mymodel 1 --name my-svc && moorage service info my-svc\n"
              f"  stop with Ctrl-C or `moorage down`", flush=True)
        if ready is not None:
            ready.set()
        if stop is None:
            with stop_on_signals() as stop:
                await stop.wait()
        else:
            await stop.wait()
        log.info("shutting down: stopping replicas")
    finally:
        if AGENT_KEY in agent_app:  # replicas belong to this process in embedded mode: stop them all
            with contextlib.suppress(Exception):
                await agent_app[AGENT_KEY].registry.destroy_all()
        with contextlib.suppress(Exception):
            await proxy.stop()
        await agent_runner.cleanup()
        if console_runner is not None:
            await console_runner.cleanup()
        await manager_runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            (data_dir / CLUSTER_FILE).unlink()
