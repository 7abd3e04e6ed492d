"""Gateway API keys through the manager's REST API and the CLI, in-process against SQLite: shown once, stored as a
hash, published to the store (and removed on revoke), ownership, bad input as RFC 7807 naming the field."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import sqlalchemy as sa

from common.apikeys import APIKEYS_PREFIX, ApiKeyRecord, hash_key
from common.status import UserRole
from common.store import MemoryStore
from manager.bootstrap import create_user
from manager.cli.main import main
from manager.context import CTX
from manager.db.models import ApiKey
from manager.server import build_manager_app
from tests.manager.apiclient import APIClient
from tests.manager.inprocess import manager_config, serving
from tests.services import free_port


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[dict]:
    port = free_port()
    store = MemoryStore()
    async with serving(build_manager_app(manager_config(tmp_path, port), store), port) as app:
        db, box = app[CTX].db, app[CTX].keypair_box
        alice_id, ak1, sk1 = await create_user(db, "alice@example.com", UserRole.USER, box=box)
        bob_id, ak2, sk2 = await create_user(db, "bob@example.com", UserRole.USER, box=box)
        _, ak3, sk3 = await create_user(db, "root@example.com", UserRole.SUPERADMIN, box=box)
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}"
            yield {"url": url, "alice": APIClient(session, url, ak1, sk1), "bob": APIClient(session, url, ak2, sk2),
                   "root": APIClient(session, url, ak3, sk3), "alice_id": alice_id, "bob_id": bob_id,
                   "store": store, "app": app, "alice_keys": (ak1, sk1)}


async def test_create_shows_key_once_and_stores_only_its_hash(manager: dict) -> None:
    alice: APIClient = manager["alice"]
    status, created = await alice.request("POST", "/api-keys", {
        "name": "ci", "allowed_models": ["echo", "echo"], "rpm": 60, "tpm": 100_000, "max_parallel": 4,
        "expires_in": "30d", "priority": "high", "metadata": {"team": "ml"}})
    assert status == 201, created
    key = created["key"]
    assert key.startswith("sk-") and len(key) >= 40 and created["hint"] == key[:7] + "…"
    assert created["allowed_models"] == ["echo"] and created["priority"] == "high"
    async with manager["app"][CTX].db() as db:
        row = (await db.execute(sa.select(ApiKey))).scalar_one()
        stored = {str(v) for v in vars(row).values()}
    assert key not in stored and row.key_hash == hash_key(key)
    record = ApiKeyRecord.model_validate_json(await manager["store"].get(APIKEYS_PREFIX + hash_key(key)))
    assert record.owner_id == manager["alice_id"] and record.rpm == 60 and record.allowed_models == ("echo",)
    assert record.expires_at is not None and not record.owner_all
    status, listed = await alice.request("GET", "/api-keys")
    assert status == 200 and [k["id"] for k in listed["api_keys"]] == [created["id"]]
    assert "key" not in listed["api_keys"][0] and key not in json.dumps(listed)


async def test_update_and_revoke_publish_at_once(manager: dict) -> None:
    alice: APIClient = manager["alice"]
    store: MemoryStore = manager["store"]
    _, created = await alice.request("POST", "/api-keys", {"name": "k", "rpm": 10})
    where = APIKEYS_PREFIX + hash_key(created["key"])
    status, updated = await alice.request("PATCH", f"/api-keys/{created['id']}", {"rpm": None, "tpm": 500,
                                                                                "allowed_models": ["a"]})
    assert status == 200 and updated["rpm"] is None and updated["tpm"] == 500
    record = ApiKeyRecord.model_validate_json(await store.get(where))
    assert record.rpm is None and record.tpm == 500 and record.allowed_models == ("a",)
    status, revoked = await alice.request("DELETE", f"/api-keys/{created['id']}")
    assert status == 200 and revoked["revoked_at"] is not None
    assert await store.get(where) is None
    status, body = await alice.request("PATCH", f"/api-keys/{created['id']}", {"rpm": 5})
    assert status == 400 and "revoked" in body["detail"]
    status, _ = await alice.request("DELETE", f"/api-keys/{created['id']}")  # idempotent
    assert status == 200


async def test_ownership(manager: dict) -> None:
    alice, bob, root = manager["alice"], manager["bob"], manager["root"]
    _, created = await alice.request("POST", "/api-keys", {"name": "mine"})
    for method, body in (("PATCH", {"rpm": 1}), ("DELETE", None)):
        status, problem = await bob.request(method, f"/api-keys/{created['id']}", body)
        assert status == 404 and problem["type"].endswith("/object-not-found")
    status, listed = await bob.request("GET", "/api-keys", )
    assert listed["api_keys"] == []
    status, listed = await bob.request("GET", "/api-keys?all=true")
    assert listed["api_keys"] == []
    status, problem = await bob.request("POST", "/api-keys", {"name": "x", "owner_id": str(manager["alice_id"])})
    assert status == 404 and "owner_id" in problem["detail"]
    # an admin creates keys for anyone and sees them
    status, made = await root.request("POST", "/api-keys", {"name": "for-bob", "owner_id": str(manager["bob_id"])})
    assert status == 201 and made["owner_id"] == str(manager["bob_id"])
    status, listed = await bob.request("GET", "/api-keys")
    assert [k["name"] for k in listed["api_keys"]] == ["for-bob"]
    status, listed = await root.request("GET", "/api-keys?all=true")
    assert {k["name"] for k in listed["api_keys"]} == {"mine", "for-bob"}
    status, _ = await root.request("DELETE", f"/api-keys/{created['id']}")
    assert status == 200


@pytest.mark.parametrize(("body", "field"), [
    ({}, "name"),
    ({"name": ""}, "name"),
    ({"name": "k", "rpm": 0}, "rpm"),
    ({"name": "k", "rpm": "many"}, "rpm"),
    ({"name": "k", "tpm": -1}, "tpm"),
    ({"name": "k", "max_parallel": 10**9}, "max_parallel"),
    ({"name": "k", "priority": "urgent"}, "priority"),
    ({"name": "k", "expires_in": "soon"}, "expires_in"),
    ({"name": "k", "expires_in": "100yr"}, "expires_in"),
    ({"name": "k", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
    ({"name": "k", "allowed_models": ["x" * 65]}, "allowed_models"),
    ({"name": "k", "allowed_models": "echo"}, "allowed_models"),
    ({"name": "k", "metadata": {str(i): "v" for i in range(17)}}, "metadata"),
    ({"name": "k", "bogus": 1}, "bogus"),
    ({"name": "k", "owner_id": "nope"}, "owner_id"),
])
async def test_bad_input_names_the_field(manager: dict, body: dict, field: str) -> None:
    status, problem = await manager["alice"].request("POST", "/api-keys", body)
    assert status == 400, problem
    assert field in problem["detail"] and problem["type"].endswith("/invalid-api-params")


async def test_bad_key_id(manager: dict) -> None:
    status, problem = await manager["alice"].request("PATCH", "/api-keys/not-a-uuid", {"rpm": 1})
    assert status == 400 and "key_id" in problem["detail"]


async def test_openapi_lists_the_routes(manager: dict) -> None:
    async with aiohttp.ClientSession() as session, session.get(manager["url"] + "/openapi.json") as resp:
        spec = await resp.json()
    assert set(spec["paths"]["/api-keys"]) == {"get", "post"}
    assert set(spec["paths"]["/api-keys/{key_id}"]) == {"patch", "delete"}
    assert "NewApiKeyResponse" in spec["components"]["schemas"]
    assert set(spec["paths"]["/usage"]) == {"get"}


async def test_keys_survive_a_store_reset(manager: dict) -> None:
    """A manager start republishes exactly the active keys (resync), dropping stale ones."""
    from manager.apikeys import resync_keys

    alice: APIClient = manager["alice"]
    store: MemoryStore = manager["store"]
    _, kept = await alice.request("POST", "/api-keys", {"name": "kept"})
    _, gone = await alice.request("POST", "/api-keys", {"name": "gone"})
    await alice.request("DELETE", f"/api-keys/{gone['id']}")
    await store.delete(APIKEYS_PREFIX + hash_key(kept["key"]))
    await store.put(APIKEYS_PREFIX + hash_key(gone["key"]), "stale")
    assert await resync_keys(manager["app"][CTX]) == 1
    assert set(await store.get_prefix(APIKEYS_PREFIX)) == {APIKEYS_PREFIX + hash_key(kept["key"])}


async def test_cli_create_prints_only_the_key(manager: dict, capsys: pytest.CaptureFixture[str]) -> None:
    ak, sk = manager["alice_keys"]
    conn = ["--endpoint", manager["url"], "--access-key", ak, "--secret-key", sk]

    def run(*args: str) -> int:
        return main([*conn, *args])

    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, run, "key", "create", "ci", "--models", "a,b", "--rpm", "60",
                                      "--tpm", "1000", "--max-parallel", "2", "--expires", "30d",
                                      "--priority", "high") == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("sk-")
    key = out.strip()
    record = ApiKeyRecord.model_validate_json(await manager["store"].get(APIKEYS_PREFIX + hash_key(key)))
    assert record.allowed_models == ("a", "b") and record.rpm == 60 and record.priority == "high"
    assert await loop.run_in_executor(None, run, "key", "list") == 0
    listing = capsys.readouterr().out
    assert "ci" in listing and key not in listing and key[:7] in listing
    assert await loop.run_in_executor(None, run, "key", "update", "ci", "--rpm", "0", "--tpm", "5") == 0
    capsys.readouterr()
    record = ApiKeyRecord.model_validate_json(await manager["store"].get(APIKEYS_PREFIX + hash_key(key)))
    assert record.rpm is None and record.tpm == 5
    assert await loop.run_in_executor(None, run, "key", "revoke", "ci") == 0
    assert await manager["store"].get(APIKEYS_PREFIX + hash_key(key)) is None
    assert await loop.run_in_executor(None, run, "key", "revoke", "ci") == 1
    assert "no active API key named 'ci'" in capsys.readouterr().err


async def test_store_down_is_a_503_and_a_retried_revoke_reaches_the_store(manager: dict) -> None:
    alice: APIClient = manager["alice"]
    store: MemoryStore = manager["store"]
    _, created = await alice.request("POST", "/api-keys", {"name": "k"})
    where = APIKEYS_PREFIX + hash_key(created["key"])
    real_delete = store.delete

    async def broken(key: str) -> None:
        raise ConnectionError("etcd unreachable")

    store.delete = broken  # type: ignore[method-assign]
    status, problem = await alice.request("DELETE", f"/api-keys/{created['id']}")
    assert status == 503 and "retry" in problem["detail"] and await store.get(where) is not None
    store.delete = real_delete  # type: ignore[method-assign]
    status, _ = await alice.request("DELETE", f"/api-keys/{created['id']}")
    assert status == 200 and await store.get(where) is None


async def test_list_shows_when_each_key_was_last_used(manager: dict) -> None:
    from common.usage import UsageRecord
    from manager.usage import record_usage

    alice: APIClient = manager["alice"]
    _, used = await alice.request("POST", "/api-keys", {"name": "used"})
    _, idle = await alice.request("POST", "/api-keys", {"name": "idle"})
    fields = {"user_id": manager["alice_id"], "model": "echo", "prompt_tokens": 1, "completion_tokens": 2,
              "duration_ms": 1.0, "status": 200}
    async with manager["app"][CTX].db() as db:
        await record_usage(db, [UsageRecord(request_id="a" * 32, at=1_700_000_000.0, key_id=used["id"], **fields),
                                UsageRecord(request_id="b" * 32, at=1_700_000_100.0, key_id=used["id"], **fields)])
    status, listed = await alice.request("GET", "/api-keys")
    assert status == 200
    by_name = {k["name"]: k for k in listed["api_keys"]}
    assert by_name["used"]["last_used_at"].startswith("2023-11-14T22:15:00")
    assert by_name["idle"]["last_used_at"] is None
    assert by_name["used"]["owner_email"] == "alice@example.com"
