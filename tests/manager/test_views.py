"""REST and GraphQL render an endpoint with one serializer (manager.api.views): the fields both APIs show agree.

One endpoint with routes in every state, read through ``GET /services/{id}`` and GraphQL ``endpoint``; each
shared field is compared (names differ by API: ``service_endpoint``/``url``, ``is_public``/``open_to_public``,
``lifecycle``/``lifecycle_stage``, ``routes``/``routings``...).
"""

from __future__ import annotations

import json
from typing import Any

from common.status import RouteHealth, RouteLifecycle, RouteTraffic
from tests.manager.test_gql import _add_route, _service, gq, mgr  # noqa: F401  (mgr: the fixture)

# REST ServeInfo field -> GraphQL Endpoint field, for the fields both show with the same value
SHARED_ENDPOINT_FIELDS = {
    "endpoint_id": "endpoint_id", "name": "name", "replicas": "replicas",
    "desired_session_count": "desired_session_count", "model_id": "model",
    "model_definition_path": "model_definition_path", "service_endpoint": "url", "is_public": "open_to_public",
    "runtime_variant": "runtime_variant", "status": "status", "lifecycle": "lifecycle_stage", "retries": "retries",
    "next_retry_at": "next_retry_at", "image": "image", "created_at": "created_at",
}
SHARED_ROUTE_FIELDS = {
    "route_id": "routing_id", "session_id": "session", "traffic_ratio": "traffic_ratio", "created_at": "created_at",
    "lifecycle": "lifecycle", "health": "health", "traffic": "traffic",
}
QUERY = ("query($id: UUID!) { endpoint(endpoint_id: $id) { " + " ".join(SHARED_ENDPOINT_FIELDS.values())
         + " resource_slots routings { " + " ".join(SHARED_ROUTE_FIELDS.values()) + " error_data status } } }")


async def test_rest_and_graphql_render_an_endpoint_alike(mgr: dict[str, Any]) -> None:  # noqa: F811
    alice, db = mgr["alice"], mgr["db"]
    eid = await _service(alice, "views-svc", replicas=3)
    await _add_route(db, eid, RouteLifecycle.RUNNING, RouteHealth.HEALTHY, ratio=0.5)
    await _add_route(db, eid, RouteLifecycle.RUNNING, RouteHealth.HEALTHY, RouteTraffic.INACTIVE)
    await _add_route(db, eid, RouteLifecycle.PROVISIONING, RouteHealth.NOT_CHECKED)
    await _add_route(db, eid, RouteLifecycle.FAILED_TO_START, RouteHealth.UNHEALTHY, RouteTraffic.INACTIVE,
                     error={"type": "creation_failed", "message": "exit 1"})
    await _add_route(db, eid, RouteLifecycle.TERMINATED, RouteHealth.UNHEALTHY, RouteTraffic.INACTIVE)

    status, rest = await alice.request("GET", f"/services/{eid}")
    assert status == 200, rest
    body = await gq(alice, QUERY, {"id": eid})
    assert "errors" not in body, body
    node = body["data"]["endpoint"]

    for rest_name, gql_name in SHARED_ENDPOINT_FIELDS.items():
        assert rest[rest_name] == node[gql_name], (rest_name, rest[rest_name], node[gql_name])
    assert rest["status"] == "DEGRADED"  # one of three replicas ready: the derivation ran, on both sides alike
    assert json.loads(node["resource_slots"]) == rest["resource_slots"]

    # the same routes in the same order (terminated ones are history in both)
    assert len(rest["routes"]) == len(node["routings"]) == 4
    for rest_route, gql_route in zip(rest["routes"], node["routings"], strict=True):
        for rest_name, gql_name in SHARED_ROUTE_FIELDS.items():
            assert rest_route[rest_name] == gql_route[gql_name], (rest_name, rest_route, gql_route)
        assert rest_route["error_data"] == (json.loads(gql_route["error_data"]) if gql_route["error_data"] else None)
    # REST's active routes are those GraphQL shows as healthy and in traffic
    assert [r["route_id"] for r in rest["active_routes"]] == [
        r["routing_id"] for r in node["routings"] if r["status"] == "healthy"]
    assert rest["active_routes"][0]["traffic_ratio"] == 0.5
