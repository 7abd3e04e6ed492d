"""`upgrade head` then `downgrade base` (and up again) on PostgreSQL and on SQLite."""

from __future__ import annotations

import sqlalchemy as sa

from manager.db import engine as db_engine
from manager.db.models import Base


async def _tables(url: str) -> set[str]:
    eng = db_engine.make_engine(url)
    try:
        async with eng.connect() as conn:
            return set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))
    finally:
        await eng.dispose()


async def _roundtrip(url: str) -> None:
    await db_engine.upgrade(url)
    assert set(Base.metadata.tables) <= await _tables(url)
    await db_engine.downgrade(url)
    assert await _tables(url) <= {"alembic_version"}
    await db_engine.upgrade(url)
    assert set(Base.metadata.tables) <= await _tables(url)


async def test_migrations_postgresql(pg_url: str) -> None:
    await _roundtrip(pg_url)


async def test_migrations_sqlite(tmp_path) -> None:  # type: ignore[no-untyped-def]
    await _roundtrip(f"sqlite+aiosqlite:///{tmp_path}/m.db")


async def test_models_match_migrations(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The ORM models and the migration history describe the same schema (no forgotten migration)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    url = f"sqlite+aiosqlite:///{tmp_path}/c.db"
    await db_engine.upgrade(url)
    eng = db_engine.make_engine(url)
    try:
        async with eng.connect() as conn:
            diff = await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata))
    finally:
        await eng.dispose()
    assert diff == []
