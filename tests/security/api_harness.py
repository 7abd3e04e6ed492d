"""A real manager served in-process for the security tests (PostgreSQL or SQLite), with two users and a folder."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from common.status import UserRole
from common.store import MemoryStore
from manager.bootstrap import create_user
from manager.context import CTX
from manager.server import build_manager_app
from tests.manager.apiclient import APIClient
from tests.manager.inprocess import manager_config, serving
from tests.manager.test_api import ECHO_DEF
from tests.services import free_port


@dataclass
class Manager:
    url: str
    port: int
    app: web.Application
    session: aiohttp.ClientSession
    alice: APIClient
    bob: APIClient


@contextlib.asynccontextmanager
async def running_manager(tmp_path: Path, db_url: str | None = None, **sections: Any) -> AsyncIterator[Manager]:
    """A manager on a free port (SQLite unless ``db_url``), no agents; its control loop ticks slowly."""
    port = free_port()
    sections.setdefault("reconcile", {"interval": 5})
    config = manager_config(tmp_path, port, **sections)
    if db_url is not None:
        config.db.url = db_url
    async with serving(build_manager_app(config, MemoryStore()), port) as app:
        db = app[CTX].db
        _, ak1, sk1 = await create_user(db, "alice@example.com", UserRole.USER, box=app[CTX].keypair_box)
        _, ak2, sk2 = await create_user(db, "bob@example.com", UserRole.USER, box=app[CTX].keypair_box)
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}"
            yield Manager(url, port, app, session, APIClient(session, url, ak1, sk1), APIClient(session, url, ak2, sk2))


async def make_folder(client: APIClient, name: str, files: dict[str, str] | None = None) -> None:
    """A model folder holding ``files`` (default: an echo model definition)."""
    status, body = await client.request("POST", "/folders", {"name": name})
    assert status == 201, body
    form = aiohttp.FormData()
    for path, content in (files or {"model-definition.yaml": ECHO_DEF}).items():
        form.add_field("file", content.encode(), filename=path, content_type="application/octet-stream")
    status, body = await client.request("POST", f"/folders/{name}/files", data=form,
                                        content_type="multipart/form-data")
    assert status == 201, body


def create_body(model: str, name: str = "echo-svc", **extra: Any) -> dict[str, Any]:
    """A valid ``POST /services`` body; ``extra`` replaces top-level fields."""
    return {"name": name, "replicas": 1, "runtime_variant": "custom", "group": "default", "domain": "default",
            "cluster_size": 1, "cluster_mode": "single-node", "open_to_public": False,
            "config": {"model": model, "model_mount_destination": "/models", "environ": {},
                       "scaling_group": "default", "resources": {"cpu": "0.1", "mem": "64m"},
                       "resource_opts": {}, "extra_mounts": {}},
            **extra}


def assert_problem(status: int, body: Any, expected: int | tuple[int, ...], *words: str) -> None:
    """An RFC 7807 body with the expected status whose detail names every one of ``words``."""
    wanted = expected if isinstance(expected, tuple) else (expected,)
    assert status in wanted, (status, body)
    assert isinstance(body, dict) and body.get("status") == status and "type" in body, body
    assert "Traceback" not in str(body), body
    for word in words:
        assert word in body["detail"], (word, body)
