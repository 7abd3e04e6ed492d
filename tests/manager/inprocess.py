"""A manager served in-process for API tests: SQLite under the test's tmp dir, a real aiohttp server on a port."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from manager.config import ManagerConfig


def manager_config(tmp_path: Path, port: int, **sections: Any) -> ManagerConfig:
    """The test defaults (auto-migrated SQLite, fixed secrets); ``sections`` replace whole config sections."""
    return ManagerConfig.model_validate({
        "manager": {"listen_port": port, "storage_root": str(tmp_path / "storage"), "auto_migrate": True},
        "db": {"url": f"sqlite+aiosqlite:///{tmp_path}/m.db"},
        "secrets": {"cluster_secret": "c" * 32, "jwt_secret": "j" * 32, "keypair_encryption_key": "k" * 32},
        "appproxy": {"port_range": [20000, 20009]},
        **sections,
    })


@contextlib.asynccontextmanager
async def serving(app: web.Application, port: int) -> AsyncIterator[web.Application]:
    """Serve ``app`` on 127.0.0.1:``port`` until the block ends; its cleanup_ctx runs on the way out."""
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield app
    finally:
        await runner.cleanup()
