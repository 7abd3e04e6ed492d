"""`upgrade head` then `downgrade base` (and up again) on PostgreSQL and on SQLite."""

from __future__ import annotations

import json

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


async def test_migrations_sqlite(tmp_path) -> None:
    await _roundtrip(f"sqlite+aiosqlite:///{tmp_path}/m.db")


async def test_models_match_migrations(tmp_path) -> None:
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


async def _endpoint_settings(url: str) -> list[tuple[str, object, object]]:
    eng = db_engine.make_engine(url)
    try:
        async with eng.connect() as conn:
            rows = await conn.execute(sa.text("SELECT name, cors_allowed_origins, network_outbound FROM endpoints"))
            return [tuple(r) for r in rows]
    finally:
        await eng.dispose()


async def _endpoint_names(url: str, kind: str) -> set[str]:
    """The names of the endpoints table's ``columns`` or ``indexes``, as the database reports them."""
    eng = db_engine.make_engine(url)
    try:
        async with eng.connect() as conn:
            found = await conn.run_sync(lambda c: getattr(sa.inspect(c), f"get_{kind}")("endpoints"))
            return {item["name"] for item in found}
    finally:
        await eng.dispose()


async def _service_settings_roundtrip(url: str) -> None:
    """0006 adds endpoints.cors_allowed_origins and network_outbound; an endpoint made before it gets the safe
    defaults (no origin, no outbound network), and 0006 goes down and up again with the row intact."""
    from manager.db.models import Domain, Endpoint, User

    await db_engine.upgrade(url)
    eng = db_engine.make_engine(url)
    try:
        async with db_engine.make_sessionmaker(eng)() as db:
            user = User(email="m@example.com")
            db.add_all([Domain(name="default"), user])
            await db.flush()
            db.add(Endpoint(name="kept", owner_id=user.id, created_user_id=user.id))
            await db.commit()
    finally:
        await eng.dispose()
    live_indexes = {"uq_endpoints_owner_name_live", "uq_endpoints_proxy_port_live", "uq_endpoints_subdomain_live"}
    await db_engine.downgrade(url, "0005")
    assert not {"cors_allowed_origins", "network_outbound"} & await _endpoint_names(url, "columns")
    assert live_indexes <= await _endpoint_names(url, "indexes"), "SQLite's table copy keeps the partial unique indexes"
    await db_engine.upgrade(url)
    assert live_indexes <= await _endpoint_names(url, "indexes")
    rows = await _endpoint_settings(url)
    assert [(name, bool(outbound)) for name, _, outbound in rows] == [("kept", False)]
    origins = rows[0][1]
    assert (json.loads(origins) if isinstance(origins, str) else origins) == []


async def test_service_settings_migration_postgresql(pg_url: str) -> None:
    await _service_settings_roundtrip(pg_url)


async def test_service_settings_migration_sqlite(tmp_path) -> None:
    await _service_settings_roundtrip(f"sqlite+aiosqlite:///{tmp_path}/s.db")
