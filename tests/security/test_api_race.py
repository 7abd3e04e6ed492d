"""Concurrent ``POST /services`` with distinct names: all succeed, each with its own proxy port."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.security.api_harness import create_body, make_folder, running_manager

CONCURRENT = 24


async def _create_many(tmp_path: Path, db_url: str | None) -> None:
    async with running_manager(tmp_path, db_url, appproxy={"port_range": [20000, 20099]}) as m:
        await make_folder(m.alice, "echo")
        results = await asyncio.gather(*(m.alice.request("POST", "/services", create_body("echo", f"race-{i:02d}"))
                                         for i in range(CONCURRENT)))
        failures = [(status, body) for status, body in results if status != 201]
        assert not failures, f"{len(failures)} of {CONCURRENT} failed: {failures[:3]}"
        urls = [body["service_endpoint"] for _, body in results]
        assert len(set(urls)) == CONCURRENT, urls
        status, listed = await m.alice.request("GET", "/services")
        assert status == 200 and len(listed) == CONCURRENT


async def test_concurrent_creates_on_postgres(tmp_path: Path, pg_url: str) -> None:
    await _create_many(tmp_path, pg_url)


async def test_concurrent_creates_on_sqlite(tmp_path: Path) -> None:
    await _create_many(tmp_path, None)


@pytest.mark.parametrize("frontend", ["wildcard"])
async def test_concurrent_creates_with_wildcard_names(tmp_path: Path, pg_url: str, frontend: str) -> None:
    """Wildcard mode: same-base names race for the same subdomain."""
    async with running_manager(tmp_path, pg_url, appproxy={"frontend": frontend,
                                                           "wildcard_domain": ".apps.test"}) as m:
        await make_folder(m.alice, "echo")
        results = await asyncio.gather(*(m.alice.request("POST", "/services", create_body("echo", name))
                                         for name in ("same-name", "same_name", "Same-Name", "SAME-NAME")))
        assert all(status == 201 for status, _ in results), results
        assert len({body["service_endpoint"] for _, body in results}) == 4
