"""The manager's REST API in-process against a real database (SQLite here, PostgreSQL in the e2e test):
auth, ownership, bad input → RFC 7807 4xx naming the field. No agent is running, so replicas stay pending."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from common.status import UserRole
from common.store import MemoryStore
from manager.bootstrap import create_user
from manager.context import CTX
from manager.server import build_manager_app
from tests.manager.apiclient import APIClient
from tests.manager.inprocess import manager_config, serving
from tests.services import free_port

ECHO_DEF = """models:
  - name: echo
    model_path: /models
    service:
      start_command: python3 /models/echo_server.py --port {port}
      port: 8000
"""


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[dict]:
    port = free_port()
    config = manager_config(tmp_path, port, appproxy={"port_range": [20000, 20001]},
                            reconcile={"interval": 0.2, "drain_grace": 0.5})
    store = MemoryStore()
    async with serving(build_manager_app(config, store), port) as app:
        db = app[CTX].db
        _, ak1, sk1 = await create_user(db, "alice@example.com", UserRole.USER, box=app[CTX].keypair_box)
        _, ak2, sk2 = await create_user(db, "bob@example.com", UserRole.USER, box=app[CTX].keypair_box)
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}"
            yield {"url": url, "alice": APIClient(session, url, ak1, sk1), "bob": APIClient(session, url, ak2, sk2),
                   "session": session, "app": app, "store": store, "ak1": ak1}


async def _folder_with(client: APIClient, name: str, files: dict[str, str]) -> None:
    status, body = await client.request("POST", "/folders", {"name": name})
    assert status == 201, body
    form = aiohttp.FormData()
    for path, content in files.items():
        form.add_field("file", content.encode(), filename=path, content_type="application/octet-stream")
    status, body = await client.request("POST", f"/folders/{name}/files", data=form,
                                        content_type="multipart/form-data")
    assert status == 201, body


def _create_body(model: str, name: str = "echo-svc", **extra: object) -> dict:
    return {"name": name, "replicas": 1, "runtime_variant": "custom", "group": "default", "domain": "default",
            "cluster_size": 1, "cluster_mode": "single-node", "open_to_public": False,
            "config": {"model": model, "model_mount_destination": "/models", "environ": {}, "scaling_group": "default",
                       "resources": {"cpu": "0.1", "mem": "64m"}, "resource_opts": {}, "extra_mounts": {}},
            **extra}


async def test_version_probe_is_unsigned(manager: dict) -> None:
    async with manager["session"].get(manager["url"] + "/") as resp:
        assert resp.status == 200
        assert (await resp.json())["version"] == "v9.20250722"


async def test_auth_failures_are_401_problems(manager: dict) -> None:
    alice: APIClient = manager["alice"]
    async with manager["session"].get(manager["url"] + "/services") as resp:
        assert resp.status == 401
        assert resp.content_type == "application/problem+json"
        assert (await resp.json())["type"].endswith("/auth-failed")
    status, _ = await alice.request("GET", "/services", secret_key="wrong-secret")
    assert status == 401
    status, body = await alice.request("GET", "/services", now=datetime.now(UTC) - timedelta(minutes=20))
    assert status == 401 and "auth.clock_skew" in body["detail"]
    status, _ = await alice.request("GET", "/services", access_key="AKIAUNKNOWN000000000")
    assert status == 401
    status, _ = await alice.request("GET", "/services")
    assert status == 200


async def test_inactive_keypair_is_refused(manager: dict) -> None:
    import sqlalchemy as sa

    from manager.db.models import KeyPair

    async with manager["app"][CTX].db() as db:
        await db.execute(sa.update(KeyPair).where(KeyPair.access_key == manager["ak1"]).values(is_active=False))
        await db.commit()
    status, body = await manager["alice"].request("GET", "/services")
    assert status == 401 and "inactive" in body["detail"]


async def test_create_service_and_bad_input(manager: dict) -> None:
    alice: APIClient = manager["alice"]
    await _folder_with(alice, "echo", {"model-definition.yaml": ECHO_DEF, "echo_server.py": "print(1)"})
    await _folder_with(alice, "broken", {"model-definition.yaml": "models: [{name: x, model_path: /m, "
                                                                  "service: {port: 70000}}]"})
    await _folder_with(alice, "badyaml", {"model-definition.yaml": "models: [\n"})
    await _folder_with(alice, "empty", {"README": "nothing"})

    status, body = await alice.request("POST", "/services", _create_body("nope"))
    assert status == 404 and "nope" in body["detail"]
    status, body = await alice.request("POST", "/services", _create_body("broken"))
    assert status == 400 and "models.0.service.port" in body["detail"]
    assert body["type"].endswith("/model-definition-validation-failed")
    status, body = await alice.request("POST", "/services", _create_body("badyaml"))
    assert status == 400 and "invalid YAML" in body["detail"]
    status, body = await alice.request("POST", "/services", _create_body("empty"))
    assert status == 400 and "model-definition.yaml" in body["detail"]
    status, body = await alice.request("POST", "/services", {**_create_body("echo"), "replicas": "many"})
    assert status == 400 and "replicas" in body["detail"]
    status, body = await alice.request("POST", "/services", _create_body("echo", name="x"))
    assert status == 400 and "name" in body["detail"]
    bad_slots = _create_body("echo")
    bad_slots["config"]["resources"] = {"mem": "lots"}
    status, body = await alice.request("POST", "/services", bad_slots)
    assert status == 400 and "config.resources.mem" in body["detail"]
    status, body = await alice.request("POST", "/services", _create_body("echo", runtime_variant="bogus"))
    assert status == 400 and "runtime_variant" in body["detail"]
    status, body = await alice.request("POST", "/services", data=b"{not json", content_type="application/json")
    assert status == 400 and "JSON" in body["detail"]

    status, info = await alice.request("POST", "/services", _create_body("echo"))
    assert status == 201, info
    assert info["service_endpoint"] == "http://127.0.0.1:20000" and info["replicas"] == 1
    status, body = await alice.request("POST", "/services", _create_body("echo"))
    assert status == 409
    # no agent: the route stays provisioning and says why
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        status, info = await alice.request("GET", f"/services/{info['endpoint_id']}")
        routes = info["routes"]
        if routes and (routes[0]["error_data"] or {}).get("type") == "unschedulable":
            break
        assert asyncio.get_running_loop().time() < deadline, info
        await asyncio.sleep(0.1)
    assert "no alive agent" in routes[0]["error_data"]["message"]
    assert info["status"] == "PROVISIONING"

    status, listed = await alice.request("GET", "/services?name=echo-svc")
    assert status == 200 and [s["name"] for s in listed] == ["echo-svc"]
    status, scaled = await alice.request("POST", f"/services/{info['endpoint_id']}/scale", {"to": 3})
    assert status == 200 and scaled["target_count"] == 3
    status, body = await alice.request("POST", f"/services/{info['endpoint_id']}/scale", {"to": -1})
    assert status == 400 and "to" in body["detail"]
    status, tok = await alice.request("POST", f"/services/{info['endpoint_id']}/token", {"duration": "1h"})
    assert status == 200 and tok["token"].count(".") == 2
    for bad in ({"duration": "forever"}, {}, {"valid_until": 1}):
        status, body = await alice.request("POST", f"/services/{info['endpoint_id']}/token", bad)
        assert status == 400, body
    status, body = await alice.request("DELETE", f"/services/{info['endpoint_id']}")
    assert status == 200 and body == {"success": True}


async def test_other_users_cannot_see_or_touch_endpoints(manager: dict) -> None:
    alice: APIClient = manager["alice"]
    bob: APIClient = manager["bob"]
    await _folder_with(alice, "echo", {"model-definition.yaml": ECHO_DEF})
    status, info = await alice.request("POST", "/services", _create_body("echo"))
    assert status == 201
    eid = info["endpoint_id"]
    assert (await bob.request("GET", "/services"))[1] == []
    for method, path, body in [("GET", f"/services/{eid}", None), ("DELETE", f"/services/{eid}", None),
                               ("POST", f"/services/{eid}/scale", {"to": 0}),
                               ("POST", f"/services/{eid}/token", {"duration": 60}),
                               ("GET", f"/services/{eid}/errors", None)]:
        status, resp = await bob.request(method, path, body)
        assert status == 404, (method, path, resp)
    # bob cannot use alice's folder either, by name or by id
    status, _ = await bob.request("POST", "/services", _create_body("echo", name="bob-svc"))
    assert status == 404
    status, _ = await bob.request("POST", "/services", _create_body(info["model_id"], name="bob-svc"))
    assert status == 404
    status, _ = await bob.request("GET", f"/services/{uuid.uuid4()}")
    assert status == 404
    status, _ = await bob.request("GET", "/services/not-a-uuid")
    assert status == 400


async def test_upload_path_validation(manager: dict) -> None:
    alice: APIClient = manager["alice"]
    await alice.request("POST", "/folders", {"name": "f1"})
    for bad in ("../escape", "/abs", "a/../../b"):
        form = aiohttp.FormData()
        form.add_field("file", b"x", filename=bad)
        status, body = await alice.request("POST", "/folders/f1/files", data=form, content_type="multipart/form-data")
        assert status == 400, (bad, body)
    status, info = await alice.request("GET", "/folders/f1")
    assert status == 200 and info["files"] == []
