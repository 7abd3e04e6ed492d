"""``PATCH /services/{id}`` and ``GET /agents`` in-process (no agent): validation, ownership, revisions."""

from __future__ import annotations

from tests.manager.apiclient import APIClient
from tests.manager.test_api import ECHO_DEF, _create_body, _folder_with, manager  # noqa: F401 - fixture


async def test_patch_bumps_the_revision_only_when_what_runs_changes(manager: dict) -> None:  # noqa: F811
    alice: APIClient = manager["alice"]
    bob: APIClient = manager["bob"]
    await _folder_with(alice, "echo", {"model-definition.yaml": ECHO_DEF})
    status, info = await alice.request("POST", "/services", _create_body("echo"))
    assert status == 201 and info["revision"] == 1
    eid = info["endpoint_id"]

    status, info = await alice.request("PATCH", f"/services/{eid}", {"replicas": 2, "max_surge": 2})
    assert status == 200 and info["revision"] == 1 and info["replicas"] == 2 and info["max_surge"] == 2
    assert info["changed"] == []
    status, info = await alice.request("PATCH", f"/services/{eid}", {"environ": {"ECHO_TAG": "v2"}})
    assert status == 200 and info["revision"] == 2 and info["changed"] == ["environ"]
    status, info = await alice.request("PATCH", f"/services/{eid}", {"environ": {"ECHO_TAG": "v2"}})
    assert status == 200 and info["revision"] == 2, "the same environment again is no change"
    status, info = await alice.request("PATCH", f"/services/{eid}", {"resources": {"cpu": "0.2", "mem": "64m"}})
    assert status == 200 and info["revision"] == 3 and info["changed"] == ["resource_slots"]
    status, info = await alice.request("PATCH", f"/services/{eid}", {"redeploy": True})
    assert status == 200 and info["revision"] == 4
    status, info = await alice.request("PATCH", f"/services/{eid}", {"open_to_public": True})
    assert status == 200 and info["revision"] == 4 and info["is_public"] is True
    status, info = await alice.request("GET", f"/services/{eid}")
    assert info["revision"] == 4 and info["max_surge"] == 2

    # bad input: 4xx naming the field, never a 500
    for body, field in (({}, "body"), ({"environ": {"1BAD": "x"}}, "environ"), ({"replicas": -1}, "replicas"),
                        ({"max_surge": 0}, "max_surge"), ({"replicas": 10_000}, "replicas"),
                        ({"resources": {"cpu": "lots"}}, "resources"), ({"runtime_variant": "nope"}, "runtime_variant"),
                        ({"model": "no-such-folder"}, "no-such-folder")):
        status, problem = await alice.request("PATCH", f"/services/{eid}", body)
        assert 400 <= status < 500, (body, status, problem)
        assert field in (problem.get("detail", "") + problem.get("title", "") + str(problem.get("errors", ""))), \
            (body, problem)
    # ownership: another user cannot learn of or change it
    status, _ = await bob.request("PATCH", f"/services/{eid}", {"replicas": 0})
    assert status == 404
    status, info = await alice.request("GET", f"/services/{eid}")
    assert info["replicas"] == 2


async def test_agents_listing_is_for_superadmins_only(manager: dict) -> None:  # noqa: F811
    status, problem = await manager["alice"].request("GET", "/agents")
    assert status == 403 and "superadmin" in problem["detail"]
