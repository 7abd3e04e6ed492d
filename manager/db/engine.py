"""Async engine and session factory; alembic upgrade/downgrade helpers usable from code and the CLI."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

import migrations

if TYPE_CHECKING:
    from alembic.config import Config  # imported when used: alembic is only needed to migrate

MIGRATIONS_DIR = Path(migrations.__file__).resolve().parent


def make_engine(url: str, echo: bool = False) -> AsyncEngine:
    kwargs: dict[str, Any] = {"echo": echo}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 30}
    else:
        kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
    engine = create_async_engine(url, **kwargs)
    if url.startswith("sqlite"):
        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:  # DB-API objects: untyped
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()
    return engine


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _run_alembic(url: str, action: str, revision: str, keypair_box: Any = None) -> None:
    from alembic import command

    cfg = alembic_config(url)
    if keypair_box is not None:  # read by migration 0005's downgrade, which decrypts the keypairs' secret keys
        cfg.attributes["keypair_unseal"] = keypair_box.open
    getattr(command, action)(cfg, revision)


async def upgrade(url: str, revision: str = "head") -> None:
    """Migrate up. Plaintext keypair secret keys from before 0005 are encrypted by the manager at start
    (manager.secretbox.check_and_seal_keypairs), not here: the migration does not know the key."""
    await asyncio.to_thread(_run_alembic, url, "upgrade", revision)


async def downgrade(url: str, revision: str = "base", keypair_box: Any = None) -> None:
    """Migrate down. Below 0005 the secret keys are stored in plaintext again, which needs ``keypair_box``
    (a manager.secretbox.SecretBox) if any are encrypted; without it the downgrade stops with a ConfigError."""
    await asyncio.to_thread(_run_alembic, url, "downgrade", revision, keypair_box)
