"""``POST /admin/gql`` in-process on SQLite, driven with the exact documents backend.ai-client 26.9.6 sends
(``func/service.py``, ``func/service_auto_scaling_rule.py``, ``pagination.py``): ownership, the filter/order
language, route status mapping, auto-scaling rule CRUD and validation, and the HTTP error contract."""

from __future__ import annotations

import asyncio
import json
import textwrap
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa

from common.status import EndpointLifecycle, RouteHealth, RouteLifecycle, RouteTraffic, UserRole
from common.store import MemoryStore
from manager.api import gql
from manager.bootstrap import create_user
from manager.context import CTX
from manager.db.models import AutoScalingRule, Endpoint, Event, Route
from manager.server import build_manager_app
from tests.manager.apiclient import APIClient
from tests.manager.inprocess import manager_config, serving
from tests.manager.test_api import ECHO_DEF, _create_body, _folder_with
from tests.services import free_port

# --- the documents of backend.ai-client 26.9.6, rebuilt the way its helpers build them -------------------------
LIST_FIELDS = ("endpoint_id name image_object { name } replicas routings { routing_id session status traffic_ratio } "
               "url session_owner open_to_public")
DETAIL_FIELDS = ("endpoint_id name image replicas routings { routing_id session status traffic_ratio } "
                 "session_owner url open_to_public")
RULE_FIELDS = ("row_id metric_source metric_name comparator threshold endpoint step_size cooldown_seconds "
               "min_replicas max_replicas created_at last_triggered_at")


def endpoint_list_query(fields: str = LIST_FIELDS) -> str:
    """pagination.execute_paginated_query("endpoint_list", {filter: String, order: String})."""
    return textwrap.dedent(f"""
    query($limit:Int!, $offset:Int!, $filter: String, $order: String) {{
      endpoint_list(
          limit:$limit, offset:$offset, filter:$filter, order:$order) {{
        items {{ {fields} }}
        total_count
      }}
    }}""").strip()


DETAIL_QUERY = textwrap.dedent(f"""
    query($endpoint_id: UUID!) {{
        endpoint(endpoint_id: $endpoint_id) {{ {DETAIL_FIELDS} }}
    }}
""")

def relay_query(root: str, variables: dict[str, str], fields: str) -> str:
    """pagination.execute_paginated_relay_query (note its missing comma after ``before:$before``)."""
    query = """
    query($limit:Int, $after:String, $offset:Int, $before:String, $var_decls) {
      $root_field(
          first:$limit, offset:$offset, after:$after, before:$before $var_args) {
        edges { node { $fields } cursor }
        count
      }
    }"""
    query = query.replace("$root_field", root).replace("$fields", fields)
    query = query.replace("$var_decls", ", ".join(f"${k}: {v}" for k, v in variables.items()))
    query = query.replace("$var_args", ", ".join(f"{k}:${k}" for k in variables))
    return textwrap.dedent(query).strip()


RULES_QUERY = relay_query("endpoint_auto_scaling_rule_nodes",
                          {"endpoint": "String!", "filter": "String", "order": "String"}, RULE_FIELDS)

CREATE_RULE = """
mutation(
    $endpoint: String!,
    $metric_source: AutoScalingMetricSource!,
    $metric_name: String!,
    $threshold: String!,
    $comparator: AutoScalingMetricComparator!,
    $step_size: Int!,
    $cooldown_seconds: Int!,
    $min_replicas: Int,
    $max_replicas: Int
) {
    create_endpoint_auto_scaling_rule_node(
        endpoint: $endpoint,
        props: {
            metric_source: $metric_source,
            metric_name: $metric_name,
            threshold: $threshold,
            comparator: $comparator,
            step_size: $step_size,
            cooldown_seconds: $cooldown_seconds,
            min_replicas: $min_replicas,
            max_replicas: $max_replicas
        }
    ) {
        rule {
            row_id
        }
    }
}
"""

GET_RULE = f"""query($rule_id: String!) {{
    endpoint_auto_scaling_rule_node(id: $rule_id) {{{RULE_FIELDS}}}
}}
"""

MODIFY_RULE = """
mutation(
    $rule_id: String!,
    $input: ModifyEndpointAutoScalingRuleInput!,
) {
    modify_endpoint_auto_scaling_rule_node(
        id: $rule_id,
        props: $input
    ) {
        ok
        msg
    }
}
"""

DELETE_RULE = """
mutation($rule_id: String!) {
    delete_endpoint_auto_scaling_rule_node(id: $rule_id) {
        ok
        msg
    }
}
"""


@pytest.fixture
async def mgr(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    port = free_port()
    config = manager_config(tmp_path, port)
    app = build_manager_app(config, MemoryStore(), run_loops=False)  # routes are placed by the tests
    gql.install(app)
    gql.install(app)  # idempotent
    async with serving(app, port):
        db = app[CTX].db
        url = f"http://127.0.0.1:{port}"
        users = {}
        async with aiohttp.ClientSession() as session:
            for name, role in (("alice", UserRole.USER), ("bob", UserRole.USER), ("root", UserRole.SUPERADMIN)):
                user_id, ak, sk = await create_user(db, f"{name}@example.com", role, box=app[CTX].keypair_box)
                users[name] = APIClient(session, url, ak, sk)
                users[name + "_id"] = user_id
            yield {"app": app, "db": db, "url": url, "session": session, **users}


async def gq(client: APIClient, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    status, body = await client.request("POST", "/admin/gql", {"query": query, "variables": variables or {}})
    assert status == 200, body
    return body


def messages(body: dict[str, Any]) -> str:
    return " | ".join(e["message"] for e in body.get("errors") or [])


async def _service(client: APIClient, name: str, folder: str = "echo", replicas: int = 1) -> str:
    status, _ = await client.request("GET", f"/folders/{folder}")
    if status == 404:
        await _folder_with(client, folder, {"model-definition.yaml": ECHO_DEF})
    status, info = await client.request("POST", "/services", {**_create_body(folder, name=name),
                                                              "replicas": replicas})
    assert status == 201, info
    return info["endpoint_id"]


async def _add_route(db: Any, endpoint_id: str, lifecycle: RouteLifecycle, health: RouteHealth,
                     traffic: RouteTraffic = RouteTraffic.ACTIVE, ratio: float = 1.0,
                     error: dict | None = None) -> str:
    route_id = uuid.uuid4()
    async with db() as s:
        s.add(Route(id=route_id, endpoint_id=uuid.UUID(endpoint_id), lifecycle=lifecycle, health=health,
                    traffic=traffic, traffic_ratio=ratio, session_id=None, error_data=error))
        await s.commit()
    return str(route_id)


async def test_service_list_is_scoped_to_the_caller(mgr: dict) -> None:
    a1 = await _service(mgr["alice"], "alice-one")
    a2 = await _service(mgr["alice"], "alice-two")
    b1 = await _service(mgr["bob"], "alice-one")  # the same name under another owner
    query = endpoint_list_query()
    variables = {"filter": None, "order": None, "limit": 20, "offset": 0}
    body = await gq(mgr["alice"], query, variables)
    assert "errors" not in body, body
    listed = body["data"]["endpoint_list"]
    assert listed["total_count"] == 2
    assert {i["endpoint_id"] for i in listed["items"]} == {a1, a2}
    item = listed["items"][0]
    assert item["session_owner"] == str(mgr["alice_id"]) and item["open_to_public"] is False
    assert item["routings"] == [] and item["url"].startswith("http://") and "image_object" in item
    body = await gq(mgr["bob"], query, variables)
    assert [i["endpoint_id"] for i in body["data"]["endpoint_list"]["items"]] == [b1]
    # the CLI's name resolution: name == "x", limit 1 -- never another user's endpoint of the same name
    resolve = {"filter": 'name == "alice-one"', "order": None, "limit": 1, "offset": 0}
    fields = "endpoint_id name"
    assert (await gq(mgr["bob"], endpoint_list_query(fields), resolve))["data"]["endpoint_list"]["items"] == [
        {"endpoint_id": b1, "name": "alice-one"}]
    assert (await gq(mgr["alice"], endpoint_list_query(fields), resolve))["data"]["endpoint_list"]["items"][0][
        "endpoint_id"] == a1
    # a superadmin sees everyone's, their own first
    root_own = await _service(mgr["root"], "alice-one")
    body = await gq(mgr["root"], endpoint_list_query(fields), resolve)
    assert body["data"]["endpoint_list"]["items"] == [{"endpoint_id": root_own, "name": "alice-one"}]
    body = await gq(mgr["root"], query, variables)
    assert body["data"]["endpoint_list"]["total_count"] == 4


async def test_filter_and_order_language(mgr: dict) -> None:
    alice = mgr["alice"]
    for name in ("svc-alpha", "svc-beta", "other-gamma"):
        await _service(alice, name)
    fields = "name replicas open_to_public"

    async def names(filter_: str | None, order: str | None = None) -> list[str] | str:
        body = await gq(alice, endpoint_list_query(fields), {"filter": filter_, "order": order, "limit": 20,
                                                            "offset": 0})
        if body.get("errors"):
            assert body["data"] is None or body["data"]["endpoint_list"] is None
            return messages(body)
        return [i["name"] for i in body["data"]["endpoint_list"]["items"]]

    assert await names('name == "svc-beta"') == ["svc-beta"]
    assert await names("name == 'svc-beta'") == ["svc-beta"]
    assert await names('name != "svc-beta"', "name") == ["other-gamma", "svc-alpha"]
    assert await names('name ilike "SVC-%"', "-name") == ["svc-beta", "svc-alpha"]
    assert await names('name like "svc-%" & name != "svc-alpha"') == ["svc-beta"]
    assert await names('name like "svc-%" and not name == "svc-alpha"') == ["svc-beta"]
    assert await names('(name == "svc-alpha" | name == "other-gamma") & replicas >= 1', "name") == [
        "other-gamma", "svc-alpha"]
    assert await names('name in ["svc-alpha", "nope"]') == ["svc-alpha"]
    assert await names('name contains "a-b"') == []
    assert await names('name contains "-"', "+name") == ["other-gamma", "svc-alpha", "svc-beta"]
    assert await names("open_to_public == false & replicas == 1", "-created_at") == [
        "other-gamma", "svc-beta", "svc-alpha"]
    assert await names('name == "x\' OR 1=1 --"') == []  # only ever a bound parameter
    assert await names('name == "%"') == []
    # errors are GraphQL errors (HTTP 200), naming the problem -- never a 500
    assert "unknown field 'secret_key'" in await names('secret_key == "x"')
    assert "unknown field 'nope'" in await names(None, "-nope")
    assert "replicas: expected an integer" in await names('replicas == "one"')
    assert "expected a value" in await names("name ==")
    assert "unexpected character" in await names('name == "a" ; drop table endpoints')
    assert "at most" in await names(" | ".join(['name == "a"'] * 40))
    assert "nests deeper" in await names("(" * 40 + 'name == "a"' + ")" * 40)
    # pagination
    body = await gq(alice, endpoint_list_query(fields), {"filter": None, "order": "name", "limit": 2, "offset": 1})
    assert body["data"]["endpoint_list"]["total_count"] == 3
    assert [i["name"] for i in body["data"]["endpoint_list"]["items"]] == ["svc-alpha", "svc-beta"]
    for bad in ({"limit": 0, "offset": 0}, {"limit": 101, "offset": 0}, {"limit": 5, "offset": -1}):
        body = await gq(alice, endpoint_list_query(fields), {"filter": None, "order": None, **bad})
        assert body["errors"] and body["data"]["endpoint_list"] is None, body


async def test_endpoint_detail_and_route_status_mapping(mgr: dict) -> None:
    alice, db = mgr["alice"], mgr["db"]
    eid = await _service(alice, "detail-svc", replicas=3)
    routes = {
        "healthy": await _add_route(db, eid, RouteLifecycle.RUNNING, RouteHealth.HEALTHY, ratio=0.5),
        "unhealthy": await _add_route(db, eid, RouteLifecycle.RUNNING, RouteHealth.UNHEALTHY),
        "degraded": await _add_route(db, eid, RouteLifecycle.RUNNING, RouteHealth.DEGRADED),
        "warming": await _add_route(db, eid, RouteLifecycle.RUNNING, RouteHealth.NOT_CHECKED),
        "provisioning": await _add_route(db, eid, RouteLifecycle.PROVISIONING, RouteHealth.NOT_CHECKED),
        "terminating": await _add_route(db, eid, RouteLifecycle.TERMINATING, RouteHealth.HEALTHY,
                                        RouteTraffic.INACTIVE),
        "failed_to_start": await _add_route(db, eid, RouteLifecycle.FAILED_TO_START, RouteHealth.UNHEALTHY,
                                            RouteTraffic.INACTIVE, error={
                                                "type": "creation_failed", "message": "exit 1",
                                                "errors": [{"src": "agent", "name": "Exit", "repr": "exit 1"}]}),
    }
    await _add_route(db, eid, RouteLifecycle.TERMINATED, RouteHealth.UNHEALTHY, RouteTraffic.INACTIVE)
    body = await gq(alice, DETAIL_QUERY, {"endpoint_id": eid})
    assert "errors" not in body, body
    detail = body["data"]["endpoint"]
    assert detail["endpoint_id"] == eid and detail["name"] == "detail-svc" and detail["replicas"] == 3
    status_of = {r["routing_id"]: r["status"] for r in detail["routings"]}
    assert len(status_of) == 7  # terminated routes are history, not routings
    assert status_of[routes["healthy"]] == "healthy"
    assert status_of[routes["unhealthy"]] == "unhealthy"
    assert status_of[routes["degraded"]] == "degraded"
    assert status_of[routes["warming"]] == "provisioning"
    assert status_of[routes["provisioning"]] == "provisioning"
    assert status_of[routes["terminating"]] == "terminating"
    assert status_of[routes["failed_to_start"]] == "failed_to_start"
    ratio = {r["routing_id"]: r["traffic_ratio"] for r in detail["routings"]}
    assert ratio[routes["healthy"]] == 0.5
    # every field of the client's service_fields set resolves
    every = ("endpoint_id image image_object { name } domain project resource_group resource_slots url model "
             "model_definition_path model_mount_destination created_user session_owner tag startup_command "
             "bootstrap_script callback_url environ name resource_opts replicas cluster_mode cluster_size "
             "open_to_public runtime_variant created_at destroyed_at "
             "routings { routing_id session status traffic_ratio endpoint } retries status lifecycle_stage "
             "errors { session_id errors { src name repr } } desired_session_count session_owner_email")
    body = await gq(alice, "query($id: UUID!) { endpoint(endpoint_id: $id) { " + every + " } }", {"id": eid})
    assert "errors" not in body, body
    full = body["data"]["endpoint"]
    assert full["status"] == "DEGRADED" and full["lifecycle_stage"] == "created"
    assert json.loads(full["resource_slots"])["mem"] and json.loads(full["environ"]) == {}
    assert full["session_owner_email"] == "alice@example.com" and full["runtime_variant"] == "custom"
    assert full["errors"] == [{"session_id": None, "errors": [{"src": "agent", "name": "Exit", "repr": "exit 1"}]}]
    assert all(r["endpoint"] == eid for r in full["routings"])

    # someone else's endpoint, an unknown one and a destroyed one all read "not found"; a bad UUID is an error
    for client, target in ((mgr["bob"], eid), (alice, str(uuid.uuid4()))):
        body = await gq(client, DETAIL_QUERY, {"endpoint_id": target})
        assert body["data"] == {"endpoint": None} and "not found" in messages(body), body
        assert body["errors"][0]["extensions"]["code"] == "object-not-found"
    body = await gq(alice, DETAIL_QUERY, {"endpoint_id": "not-a-uuid"})
    assert body["data"] is None and "UUID" in messages(body)
    assert (await gq(mgr["root"], DETAIL_QUERY, {"endpoint_id": eid}))["data"]["endpoint"]["name"] == "detail-svc"
    async with db() as s:
        await s.execute(sa.update(Endpoint).where(Endpoint.id == uuid.UUID(eid))
                        .values(lifecycle=EndpointLifecycle.DESTROYED))
        await s.commit()
    assert "not found" in messages(await gq(alice, DETAIL_QUERY, {"endpoint_id": eid}))
    listed = await gq(alice, endpoint_list_query("name lifecycle_stage"),
                      {"filter": None, "order": None, "limit": 10, "offset": 0})
    assert listed["data"]["endpoint_list"]["items"] == []
    listed = await gq(alice, endpoint_list_query("name lifecycle_stage"),
                      {"filter": 'lifecycle_stage == "destroyed"', "order": None, "limit": 10, "offset": 0})
    assert listed["data"]["endpoint_list"]["items"] == [{"name": "detail-svc", "lifecycle_stage": "destroyed"}]


def _rule_vars(endpoint_id: str, **overrides: Any) -> dict[str, Any]:
    # what ServiceAutoScalingRule.create() puts on the wire: lower-case enum values, the threshold as a string
    return {"endpoint": endpoint_id, "metric_source": "kernel", "metric_name": "cpu_util", "threshold": "75.5",
            "comparator": "greater_than", "step_size": 1, "cooldown_seconds": 120, "min_replicas": None,
            "max_replicas": None, **overrides}


async def test_auto_scaling_rule_crud_with_the_client_documents(mgr: dict) -> None:
    alice, bob, root, db = mgr["alice"], mgr["bob"], mgr["root"], mgr["db"]
    eid = await _service(alice, "scaled-svc")
    body = await gq(alice, CREATE_RULE, _rule_vars(eid))
    assert "errors" not in body, body
    rule_id = body["data"]["create_endpoint_auto_scaling_rule_node"]["rule"]["row_id"]
    uuid.UUID(rule_id)
    body = await gq(alice, CREATE_RULE, _rule_vars(eid, metric_source="INFERENCE_FRAMEWORK",
                                                   metric_name="vllm:num_requests_running", threshold="2",
                                                   comparator="LESS_THAN", step_size=-1, min_replicas=1,
                                                   max_replicas=4))
    assert "errors" not in body, body
    second = body["data"]["create_endpoint_auto_scaling_rule_node"]["rule"]["row_id"]
    async with db() as s:
        stored = await s.get(AutoScalingRule, uuid.UUID(rule_id))
        assert (stored.metric_source, stored.comparator, stored.threshold, stored.min_replicas) == (
            "kernel", "greater_than", 75.5, None)
        assert stored.enabled is True
        kinds = (await s.execute(sa.select(Event.kind).where(Event.endpoint_id == uuid.UUID(eid)))).scalars().all()
        assert kinds.count("autoscaling_rule_created") == 2

    listed = await gq(alice, RULES_QUERY, {"endpoint": eid, "filter": None, "order": None, "limit": 20,
                                           "offset": 0, "after": None, "before": None})
    assert "errors" not in listed, listed
    conn = listed["data"]["endpoint_auto_scaling_rule_nodes"]
    assert conn["count"] == 2
    nodes = [e["node"] for e in conn["edges"]]
    assert [n["row_id"] for n in nodes] == [rule_id, second]
    assert nodes[0] == {**nodes[0], "metric_source": "KERNEL", "comparator": "GREATER_THAN", "threshold": "75.5",
                        "endpoint": eid, "step_size": 1, "cooldown_seconds": 120, "min_replicas": None,
                        "max_replicas": None, "last_triggered_at": None}
    assert nodes[1]["metric_source"] == "INFERENCE_FRAMEWORK" and nodes[1]["step_size"] == -1
    filtered = await gq(alice, RULES_QUERY, {"endpoint": eid, "filter": 'metric_source == "inference_framework"',
                                             "order": "-created_at", "limit": 20, "offset": 0, "after": None,
                                             "before": None})
    assert [e["node"]["row_id"] for e in filtered["data"]["endpoint_auto_scaling_rule_nodes"]["edges"]] == [second]
    # relay paging: first + after
    page = await gq(alice, "query($e: String!, $after: String) { endpoint_auto_scaling_rule_nodes(endpoint: $e, "
                           "first: 1, after: $after) { count edges { cursor node { row_id id } } "
                           "pageInfo { hasNextPage hasPreviousPage endCursor } } }", {"e": eid, "after": None})
    conn = page["data"]["endpoint_auto_scaling_rule_nodes"]
    assert conn["count"] == 2 and conn["pageInfo"]["hasNextPage"] is True
    assert conn["edges"][0]["node"]["row_id"] == rule_id
    page = await gq(alice, "query($e: String!, $after: String) { endpoint_auto_scaling_rule_nodes(endpoint: $e, "
                           "first: 1, after: $after) { edges { node { row_id } } pageInfo { hasNextPage "
                           "hasPreviousPage } } }", {"e": eid, "after": conn["pageInfo"]["endCursor"]})
    conn = page["data"]["endpoint_auto_scaling_rule_nodes"]
    assert [e["node"]["row_id"] for e in conn["edges"]] == [second]
    assert conn["pageInfo"] == {"hasNextPage": False, "hasPreviousPage": True}

    got = await gq(alice, GET_RULE, {"rule_id": rule_id})
    assert got["data"]["endpoint_auto_scaling_rule_node"]["metric_name"] == "cpu_util"
    global_id = nodes[0]["row_id"]
    got = await gq(alice, "query($id: String!) { endpoint_auto_scaling_rule_node(id: $id) { id row_id } }",
                   {"id": global_id})
    relay_id = got["data"]["endpoint_auto_scaling_rule_node"]["id"]
    got = await gq(alice, GET_RULE, {"rule_id": relay_id})  # a relay global id works as well
    assert got["data"]["endpoint_auto_scaling_rule_node"]["row_id"] == rule_id

    # modify as `service auto-scaling-rule update --threshold 80 --max-replicas 5 --min-replicas -1` sends it
    body = await gq(alice, MODIFY_RULE, {"rule_id": rule_id, "input": {"threshold": "80", "max_replicas": 5,
                                                                      "min_replicas": None}})
    assert body["data"]["modify_endpoint_auto_scaling_rule_node"] == {"ok": True, "msg": "updated"}, body
    got = (await gq(alice, GET_RULE, {"rule_id": rule_id}))["data"]["endpoint_auto_scaling_rule_node"]
    assert (got["threshold"], got["max_replicas"], got["min_replicas"], got["metric_name"]) == ("80", 5, None,
                                                                                                "cpu_util")
    body = await gq(alice, MODIFY_RULE, {"rule_id": rule_id, "input": {"metric_name": None}})
    assert "metric_name: cannot be null" in messages(body)

    # another user: every operation reads "not found", and nothing changes
    for query, variables in ((GET_RULE, {"rule_id": rule_id}),
                             (MODIFY_RULE, {"rule_id": rule_id, "input": {"step_size": 5}}),
                             (DELETE_RULE, {"rule_id": rule_id}),
                             (CREATE_RULE, _rule_vars(eid)),
                             (RULES_QUERY, {"endpoint": eid, "limit": 20})):
        body = await gq(bob, query, variables)
        assert "not found" in messages(body), (query, body)
        assert body["errors"][0]["extensions"]["code"] == "object-not-found"
    assert (await gq(bob, GET_RULE, {"rule_id": str(uuid.uuid4())}))["errors"][0]["message"].endswith("not found")
    # a superadmin may
    assert (await gq(root, GET_RULE, {"rule_id": rule_id}))["data"]["endpoint_auto_scaling_rule_node"]

    body = await gq(alice, DELETE_RULE, {"rule_id": rule_id})
    assert body["data"]["delete_endpoint_auto_scaling_rule_node"] == {"ok": True, "msg": "deleted"}
    assert "not found" in messages(await gq(alice, GET_RULE, {"rule_id": rule_id}))
    assert "not found" in messages(await gq(alice, DELETE_RULE, {"rule_id": rule_id}))
    listed = await gq(alice, RULES_QUERY, {"endpoint": eid, "limit": 20})
    assert listed["data"]["endpoint_auto_scaling_rule_nodes"]["count"] == 1


async def test_auto_scaling_rule_validation(mgr: dict) -> None:
    alice, db = mgr["alice"], mgr["db"]
    eid = await _service(alice, "valid-svc")

    async def create_error(**overrides: Any) -> str:
        body = await gq(alice, CREATE_RULE, _rule_vars(eid, **overrides))
        assert body.get("errors"), body
        return messages(body)

    assert "max_replicas: must be greater than or equal to min_replicas" in await create_error(
        min_replicas=3, max_replicas=2)
    assert "step_size: must not be 0" in await create_error(step_size=0)
    assert "cooldown_seconds: must be between" in await create_error(cooldown_seconds=-5)
    assert "cooldown_seconds: must be between" in await create_error(cooldown_seconds=10**8)
    assert "min_replicas: must be between" in await create_error(min_replicas=-1)
    assert "max_replicas: must be between" in await create_error(max_replicas=10**6)
    assert "threshold" in await create_error(threshold="lots")
    assert "threshold" in await create_error(threshold="NaN")
    assert "threshold" in await create_error(threshold="1e400")
    assert "PROMETHEUS" in await create_error(metric_source="prometheus")
    assert "AutoScalingMetricSource must be one of" in await create_error(metric_source="gpu")
    assert "AutoScalingMetricComparator must be one of" in await create_error(comparator="eq")
    assert "metric_name" in await create_error(metric_name="")
    assert "metric_name" in await create_error(metric_name="x" * 200)
    assert "metric_name" in await create_error(metric_name="cpu; drop")
    assert "endpoint: not a valid UUID" in await create_error(endpoint="nope")
    assert "not found" in await create_error(endpoint=str(uuid.uuid4()))
    # min/max are optional (Backend.AI #3756); enum-style literals and a PROXY source are accepted
    body = await gq(alice, """mutation($e: String!) { create_endpoint_auto_scaling_rule_node(endpoint: $e,
        props: {metric_source: PROXY, metric_name: "requests_per_second", threshold: "10",
                comparator: GREATER_THAN_OR_EQUAL, step_size: 2, cooldown_seconds: 0}) { ok rule { metric_source
                comparator min_replicas max_replicas enabled } } }""", {"e": eid})
    assert body["data"]["create_endpoint_auto_scaling_rule_node"] == {"ok": True, "rule": {
        "metric_source": "PROXY", "comparator": "GREATER_THAN_OR_EQUAL", "min_replicas": None,
        "max_replicas": None, "enabled": True}}, body
    # a modification is validated against the merged rule
    rule_id = (await gq(alice, CREATE_RULE, _rule_vars(eid, min_replicas=2, max_replicas=4)))["data"][
        "create_endpoint_auto_scaling_rule_node"]["rule"]["row_id"]
    body = await gq(alice, MODIFY_RULE, {"rule_id": rule_id, "input": {"max_replicas": 1}})
    assert "max_replicas: must be greater than or equal to min_replicas" in messages(body)
    assert (await gq(alice, GET_RULE, {"rule_id": rule_id}))["data"]["endpoint_auto_scaling_rule_node"][
        "max_replicas"] == 4
    assert "not a valid auto-scaling rule id" in messages(await gq(alice, GET_RULE, {"rule_id": "garbage"}))
    # a cap on rules per endpoint
    async with db() as s:
        for _ in range(40):
            s.add(AutoScalingRule(endpoint_id=uuid.UUID(eid), metric_source="kernel", metric_name="m",
                                  comparator="less_than", threshold=1.0, step_size=1, cooldown_seconds=1))
        await s.commit()
    assert "at most" in await create_error()
    # rules on an endpoint being destroyed are refused (Backend.AI #4874), and gone with a destroyed one
    status, _ = await alice.request("DELETE", f"/services/{eid}")
    assert status == 200
    body = await gq(alice, MODIFY_RULE, {"rule_id": rule_id, "input": {"step_size": 3}})
    assert "being destroyed" in messages(body)
    other = await _service(alice, "valid-two")
    status, _ = await alice.request("DELETE", f"/services/{other}")
    assert "being destroyed" in messages(await gq(alice, CREATE_RULE, _rule_vars(other)))
    async with db() as s:
        await s.execute(sa.update(Endpoint).where(Endpoint.id == uuid.UUID(other))
                        .values(lifecycle=EndpointLifecycle.DESTROYED))
        await s.commit()
    assert "not found" in messages(await gq(alice, CREATE_RULE, _rule_vars(other)))


async def test_http_contract(mgr: dict) -> None:
    alice, session, url = mgr["alice"], mgr["session"], mgr["url"]
    # not signed
    async with session.post(url + "/admin/gql", json={"query": "{ __typename }"}) as resp:
        assert resp.status == 401 and resp.content_type == "application/problem+json"
    # not a GraphQL request at all: 400 problem documents
    status, body = await alice.request("POST", "/admin/gql", data=b"{nope", content_type="application/json")
    assert status == 400 and "JSON" in body["detail"]
    for bad in ([], {"variables": {}}, {"query": ""}, {"query": 5}, {"query": "{ __typename }", "variables": []},
                {"query": "{ __typename }", "operationName": 3}):
        status, body = await alice.request("POST", "/admin/gql", bad)
        assert status == 400 and body["type"].endswith("/invalid-api-params"), (bad, body)
    status, body = await alice.request("POST", "/admin/gql", {"query": "{ __typename }" + " " * 70_000})
    assert status == 413, body
    # GraphQL-level problems: HTTP 200 with errors
    body = await gq(alice, "{ endpoint_list(limit: 1, offset: 0 { total_count } }")
    assert body["data"] is None and "Syntax Error" in messages(body)
    body = await gq(alice, "{ endpoint_list(limit: 1, offset: 0) { no_such_field } }")
    assert "no_such_field" in messages(body)
    body = await gq(alice, "query($x: Int!) { endpoint_list(limit: $x, offset: 0) { total_count } }")
    assert "$x" in messages(body)
    deep = "{ endpoint_list(limit: 1, offset: 0) { items { " + "image_object { " * 1 + "name } } } }"
    assert "errors" not in await gq(alice, deep)
    bomb = ("query { endpoint_auto_scaling_rule_nodes(endpoint: \"x\") { edges { node { id } } } "
            + "__schema { types { " + "fields { type { " * 8 + "name" + " } }" * 8 + " } } }")
    body = await gq(alice, bomb)
    assert body["data"] is None and ("levels deep" in messages(body) or "introspection depth" in messages(body))
    nonsense = "{ " + "a { " * 30 + "b" + " }" * 31  # unknown fields, but the depth rule reports it too
    assert "levels deep" in messages(await gq(alice, nonsense))
    status, body = await alice.request("POST", "/admin/gql", {"query": "{ " + "a " * 12_000 + "}"})
    assert status == 200 and body["errors"], body
    body = await gq(alice, "subscription { x }")
    assert body["errors"]
    # introspection works (GraphQL tooling), and mutations are not reachable through a query
    from graphql import get_introspection_query

    body = await gq(alice, get_introspection_query())
    assert "errors" not in body and body["data"]["__schema"]["queryType"]["name"] == "Query"
    body = await gq(alice, "query { delete_endpoint_auto_scaling_rule_node(id: \"x\") { ok } }")
    assert body["errors"]


async def test_internal_errors_are_not_leaked(mgr: dict, monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    from manager.api.gql import resolvers

    async def boom(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("secret connection string postgres://u:p@h")

    monkeypatch.setattr(resolvers, "_endpoint_views", boom)
    eid = await _service(mgr["alice"], "boom-svc")
    body = await gq(mgr["alice"], DETAIL_QUERY, {"endpoint_id": eid})
    assert body["errors"][0]["message"] == "internal server error"
    assert "secret" not in json.dumps(body)
    assert "secret connection string" in caplog.text


async def test_concurrent_top_level_fields(mgr: dict) -> None:
    """Sibling fields resolve concurrently; each uses its own DB session."""
    eid = await _service(mgr["alice"], "many-svc")
    query = "query($id: UUID!) { " + " ".join(
        f"e{i}: endpoint(endpoint_id: $id) {{ name }} l{i}: endpoint_list(limit: 5, offset: 0) {{ total_count }}"
        for i in range(10)) + " }"
    results = await asyncio.gather(*(gq(mgr["alice"], query, {"id": eid}) for _ in range(3)))
    for body in results:
        assert "errors" not in body, body
        assert body["data"]["e9"]["name"] == "many-svc" and body["data"]["l0"]["total_count"] == 1
