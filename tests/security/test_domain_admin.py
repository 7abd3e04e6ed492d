"""A domain admin (role ``admin``) acts only on objects of users in its own domain (``users.domain_name``);
superadmins stay global. Everything of another domain reads as 404, exactly like an id that does not exist.

Hostile: an admin of the ``default`` domain goes after the service, folder, token and dry-run task of a user of
domain ``dom-b`` by id and by name, through the REST API and ``/admin/gql``. The victim's client sends the
``domain`` every Backend.AI client sends by default (``default``): that field is the client's say, not the
user's domain, and must not open anything. Real manager, PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from common.status import UserRole
from manager.bootstrap import create_user
from manager.context import CTX
from manager.db.models import Domain, User
from tests.manager.apiclient import APIClient
from tests.security.api_harness import Manager, assert_problem, create_body, make_folder, running_manager


async def _user(m: Manager, email: str, role: UserRole, domain: str) -> APIClient:
    db = m.app[CTX].db
    user_id, ak, sk = await create_user(db, email, role, box=m.app[CTX].keypair_box)
    async with db() as session:
        if await session.get(Domain, domain) is None:
            session.add(Domain(name=domain))
            await session.flush()
        await session.execute(sa.update(User).where(User.id == user_id).values(domain_name=domain))
        await session.commit()
    return APIClient(m.session, m.url, ak, sk)


async def _gql(client: APIClient, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    status, body = await client.request("POST", "/admin/gql", {"query": query, "variables": variables})
    assert status == 200, body
    return body


@pytest.fixture
async def world(tmp_path: Path, pg_url: str):
    async with running_manager(tmp_path, db_url=pg_url) as m:
        victim = await _user(m, "victim@b.test", UserRole.USER, "dom-b")
        admin = await _user(m, "admin@a.test", UserRole.ADMIN, "default")
        neighbour = await _user(m, "neighbour@a.test", UserRole.USER, "default")
        root = await _user(m, "root@x.test", UserRole.SUPERADMIN, "dom-x")
        objects: dict[str, Any] = {}
        for who, client in (("victim", victim), ("neighbour", neighbour)):
            await make_folder(client, f"{who}-folder")
            status, folder = await client.request("GET", f"/folders/{who}-folder")
            assert status == 200, folder
            status, svc = await client.request("POST", "/services", create_body(f"{who}-folder", name=f"{who}-svc"))
            assert status in (200, 201), svc
            status, token = await client.request("POST", f"/services/{svc['endpoint_id']}/token",
                                                 {"duration": "1h"})
            assert status == 200, token
            objects[f"{who}_ids"] = {"folder_id": folder["id"], "service_id": svc["endpoint_id"],
                            "token_id": token["token_id"], "access_key": client.access_key}
        yield {"m": m, "victim": victim, "admin": admin, "neighbour": neighbour, "root": root, **objects}


def _missing(status: int, body: Any) -> None:
    assert_problem(status, body, 404)


async def test_admin_cannot_reach_a_service_or_token_of_another_domain(world: dict) -> None:
    admin, svc, token = world["admin"], world["victim_ids"]["service_id"], world["victim_ids"]["token_id"]
    for method, path, body in [
        ("GET", f"/services/{svc}", None),
        ("POST", f"/services/{svc}/scale", {"to": 0}),
        ("PATCH", f"/services/{svc}", {"replicas": 0}),
        ("GET", f"/services/{svc}/errors", None),
        ("POST", f"/services/{svc}/errors/clear", None),
        ("POST", f"/services/{svc}/sync", None),
        ("POST", f"/services/{svc}/token", {"duration": "1h"}),
        ("GET", f"/services/{svc}/tokens", None),
        ("DELETE", f"/services/{svc}/tokens/{token}", None),
        ("GET", f"/services/{svc}/autoscaling-decisions", None),
        ("DELETE", f"/services/{svc}", None),
    ]:
        status, answer = await admin.request(method, path, body)
        assert status == 404, (method, path, status, answer)
        _missing(status, answer)
    # by name: listing and searching never show it
    status, listed = await admin.request("GET", "/services?all=true")
    assert status == 200 and "victim-svc" not in {s["name"] for s in listed}, listed
    for name, expected in (("victim-svc", 0), ("neighbour-svc", 1)):  # the neighbour is of the admin's domain
        status, found = await admin.request("POST", "/services/_/search",
                                            {"filter": {"name": {"equals": name}}, "offset": 0, "limit": 10})
        assert status == 200 and found["pagination"]["total"] == expected, found
    # the victim's service and token are untouched
    status, info = await world["victim"].request("GET", f"/services/{svc}")
    assert status == 200 and info["desired_session_count"] == 1, info
    status, tokens = await world["victim"].request("GET", f"/services/{svc}/tokens")
    assert status == 200 and not any(t["revoked"] for t in tokens["tokens"]), tokens


async def test_admin_cannot_reach_a_folder_of_another_domain(world: dict) -> None:
    admin, folder = world["admin"], world["victim_ids"]["folder_id"]
    for ref in (folder, "victim-folder"):
        status, body = await admin.request("GET", f"/folders/{ref}")
        _missing(status, body)
        status, body = await admin.request("DELETE", f"/folders/{ref}")
        _missing(status, body)
    # nor deploy it (as itself, or as the victim's keypair)
    status, body = await admin.request("POST", "/services", create_body(folder, name="stolen"))
    _missing(status, body)
    status, body = await admin.request("POST", "/services", create_body(
        folder, name="stolen-2", owner_access_key=world["victim_ids"]["access_key"]))
    assert status in (400, 404) and "stolen" not in str(body), body
    status, body = await world["victim"].request("GET", "/folders/victim-folder")
    assert status == 200, body


async def test_admin_cannot_create_on_behalf_of_a_user_of_another_domain(world: dict) -> None:
    status, body = await world["admin"].request("POST", "/services", create_body(
        "victim-folder", name="planted", owner_access_key=world["victim_ids"]["access_key"]))
    assert_problem(status, body, 400, "no such keypair")  # the same answer as for a key that does not exist
    status, listed = await world["victim"].request("GET", "/services")
    assert "planted" not in {s["name"] for s in listed}


async def test_admin_cannot_follow_a_dry_run_of_another_domain(world: dict) -> None:
    status, task = await world["victim"].request("POST", "/services/_/try",
                                                 create_body("victim-folder", name="victim-try"))
    assert status == 200, task
    status, body = await world["admin"].request("GET", f"/events/background-task?task_id={task['task_id']}")
    _missing(status, body)


ENDPOINT = "query($id: UUID!) { endpoint(endpoint_id: $id) { endpoint_id name } }"
ENDPOINT_LIST = """query($filter: String) { endpoint_list(limit: 10, offset: 0, filter: $filter) {
  total_count items { endpoint_id name } } }"""
CREATE_RULE = """mutation($endpoint: String!) { create_endpoint_auto_scaling_rule_node(endpoint: $endpoint, props: {
  metric_source: KERNEL, metric_name: "cpu_util", threshold: "50", comparator: GREATER_THAN, step_size: 1,
  cooldown_seconds: 60 }) { ok msg } }"""


async def test_admin_cannot_reach_another_domain_through_graphql(world: dict) -> None:
    admin, svc = world["admin"], world["victim_ids"]["service_id"]
    body = await _gql(admin, ENDPOINT, {"id": svc})
    assert not (body.get("data") or {}).get("endpoint"), body
    assert "not found" in str(body.get("errors")), body
    body = await _gql(admin, ENDPOINT_LIST, {"filter": 'name == "victim-svc"'})
    assert body["data"]["endpoint_list"]["total_count"] == 0, body
    body = await _gql(admin, ENDPOINT_LIST, {"filter": None})
    names = {e["name"] for e in body["data"]["endpoint_list"]["items"]}
    assert "victim-svc" not in names and "neighbour-svc" in names, names
    body = await _gql(admin, CREATE_RULE, {"endpoint": svc})
    result = (body.get("data") or {}).get("create_endpoint_auto_scaling_rule_node")
    assert not (result and result.get("ok")), body


async def test_admin_keeps_its_own_domain_and_superadmin_stays_global(world: dict) -> None:
    admin, root = world["admin"], world["root"]
    own = world["neighbour_ids"]
    status, body = await admin.request("GET", f"/services/{own['service_id']}")
    assert status == 200, body
    status, body = await admin.request("GET", f"/folders/{own['folder_id']}")
    assert status == 200, body
    status, body = await admin.request("GET", f"/services/{own['service_id']}/tokens")
    assert status == 200 and body["tokens"], body
    for ids in (world["victim_ids"], world["neighbour_ids"]):
        status, body = await root.request("GET", f"/services/{ids['service_id']}")
        assert status == 200, body
        status, body = await root.request("GET", f"/folders/{ids['folder_id']}")
        assert status == 200, body
    body = await _gql(root, ENDPOINT, {"id": world["victim_ids"]["service_id"]})
    assert body["data"]["endpoint"]["name"] == "victim-svc", body
