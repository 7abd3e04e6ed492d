"""Per-user key defaults through the manager's REST API and CLI, in-process against SQLite: admins set them, keys
without their own value inherit them (published to the store at once, for keys made before and after), a key's
own value wins, users read only their own and cannot set them, bad input names the field."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from common.apikeys import APIKEYS_PREFIX, ApiKeyRecord
from manager.cli.main import main
from tests.manager.test_api_keys import manager  # noqa: F401 - fixture


async def _published(manager: dict[str, Any]) -> dict[str, ApiKeyRecord]:  # noqa: F811
    stored = await manager["store"].get_prefix(APIKEYS_PREFIX)
    return {r.name: r for r in (ApiKeyRecord.model_validate_json(v) for v in stored.values())}


async def test_keys_inherit_their_owners_defaults(manager: dict[str, Any]) -> None:  # noqa: F811
    alice, bob, root = manager["alice"], manager["bob"], manager["root"]
    path = f"/users/{manager['alice_id']}/key-defaults"
    status, before = await alice.request("POST", "/api-keys", {"name": "before"})
    assert status == 201 and before["priority"] == "standard" and before["effective"]["rpm"] is None
    status, own = await alice.request("POST", "/api-keys", {"name": "own", "rpm": 100, "priority": "low"})
    assert status == 201
    status, problem = await alice.request("PUT", path, {"rpm": 7})
    assert status == 403, problem  # users do not set their own defaults
    status, problem = await bob.request("GET", path)
    assert status == 404  # another user's defaults read as not found
    for body, field in (({"rpm": 0}, "rpm"), ({"rpm": "7"}, "rpm"), ({"priority": "urgent"}, "priority"),
                        ({"budget": -1}, "budget"), ({"color": "red"}, "color")):
        status, problem = await root.request("PUT", path, body)
        assert status == 400 and field in str(problem), (body, problem)
    status, defaults = await root.request("PUT", path, {"rpm": 7, "tpm": 7000, "max_parallel": 2, "budget": 5.0,
                                                        "priority": "high"})
    assert status == 200 and defaults == {"user_id": str(manager["alice_id"]), "rpm": 7, "tpm": 7000,
                                          "max_parallel": 2, "budget": 5.0, "priority": "high"}
    status, mine = await alice.request("GET", path)
    assert status == 200 and mine == defaults
    published = await _published(manager)
    inherited = published["before"]  # a key made before the defaults: republished at once
    assert (inherited.rpm, inherited.tpm, inherited.max_parallel, inherited.budget, inherited.priority) == (
        7, 7000, 2, 5.0, "high")
    assert inherited.spent_month  # a budget travels with the month it counts
    assert (published["own"].rpm, published["own"].priority, published["own"].tpm) == (100, "low", 7000)
    status, after = await alice.request("POST", "/api-keys", {"name": "after"})
    assert status == 201 and after["rpm"] is None and after["effective"]["rpm"] == 7
    assert after["effective"]["priority"] == "high" and (await _published(manager))["after"].rpm == 7
    status, listed = await alice.request("GET", "/api-keys")
    assert {k["name"]: k["effective"]["rpm"] for k in listed["api_keys"]} == {"before": 7, "own": 100, "after": 7}
    # the key's own value set later wins; cleared again, it inherits
    status, _ = await alice.request("PATCH", f"/api-keys/{before['id']}", {"rpm": 50, "priority": "low"})
    assert status == 200 and (await _published(manager))["before"].rpm == 50
    status, _ = await alice.request("PATCH", f"/api-keys/{before['id']}", {"rpm": None, "priority": None})
    published = await _published(manager)
    assert status == 200 and (published["before"].rpm, published["before"].priority) == (7, "high")
    # the defaults removed: unlimited, standard
    status, _ = await root.request("PUT", path, {})
    published = await _published(manager)
    assert status == 200 and (published["before"].rpm, published["before"].priority) == (None, "standard")
    assert published["before"].budget is None and published["own"].tpm is None
    status, problem = await root.request("GET", f"/users/{uuid.uuid4()}/key-defaults")
    assert status == 404
    status, problem = await root.request("GET", "/users/nope/key-defaults")
    assert status == 400 and "user_id" in problem["detail"]


async def test_cli_key_defaults(manager: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    root = manager["root"]
    conn = ["--endpoint", manager["url"], "--access-key", root.access_key, "--secret-key", root.secret_key]
    loop = asyncio.get_running_loop()
    user = str(manager["alice_id"])
    assert await loop.run_in_executor(None, main, [*conn, "key", "defaults", user, "--rpm", "9", "--priority",
                                                   "low", "--json"]) == 0
    assert '"rpm": 9' in capsys.readouterr().out
    assert await loop.run_in_executor(None, main, [*conn, "key", "defaults", user]) == 0
    out = capsys.readouterr().out
    assert user in out and "low" in out
    assert await loop.run_in_executor(None, main, [*conn, "key", "defaults", user, "--clear", "--json"]) == 0
    assert '"rpm": null' in capsys.readouterr().out
