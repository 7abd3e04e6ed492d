"""The rest of the /services contract in-process (no agent): search, runtimes, sync, tokens list/revoke,
routings, try (fails to place without an agent), background-task SSE, X-BackendAI-Token, OpenAPI."""

from __future__ import annotations

import json
import time
import uuid

import aiohttp
import jwt

from common.store import ROUTES_PREFIX
from tests.manager.apiclient import APIClient
from tests.manager.test_api import ECHO_DEF, _create_body, _folder_with, manager  # noqa: F401 - fixture


async def _service(alice: APIClient, name: str = "echo-svc") -> str:
    status, info = await alice.request("POST", "/services", _create_body("echo", name=name))
    assert status == 201, info
    return info["endpoint_id"]


async def test_search_runtimes_sync(manager: dict) -> None:  # noqa: F811
    alice: APIClient = manager["alice"]
    bob: APIClient = manager["bob"]
    await _folder_with(alice, "echo", {"model-definition.yaml": ECHO_DEF})
    for name in ("alpha-svc", "beta-svc"):
        await _service(alice, name)
    status, result = await alice.request("POST", "/services/_/search",
                                         {"filter": {"name": {"contains": "alp"}}, "limit": 10})
    assert status == 200 and [i["name"] for i in result["items"]] == ["alpha-svc"]
    assert result["pagination"] == {"total": 1, "offset": 0, "limit": 10}
    status, result = await alice.request("POST", "/services/_/search", {"offset": 1, "limit": 1})
    assert status == 200 and result["pagination"]["total"] == 2 and len(result["items"]) == 1
    status, result = await bob.request("POST", "/services/_/search", {})
    assert status == 200 and result["items"] == []
    for bad in ({"limit": 0}, {"limit": 101}, {"offset": -1}, {"filter": {"name": {"contains": 3}}}):
        status, body = await alice.request("POST", "/services/_/search", bad)
        assert status == 400, (bad, body)
    status, runtimes = await alice.request("GET", "/services/_/runtimes")
    names = [r["name"] for r in runtimes["runtimes"]]
    assert status == 200 and {"custom", "vllm", "sglang", "huggingface-tgi", "nim", "modular-max", "cmd",
                              "llamacpp"} <= set(names)
    status, listed = await alice.request("GET", "/services")
    eid = listed[0]["id"]
    status, body = await alice.request("POST", f"/services/{eid}/sync")
    assert status == 200 and body == {"success": True}
    table = json.loads(await manager["store"].get(ROUTES_PREFIX + eid))
    assert table["name"] == listed[0]["name"]
    assert (await bob.request("POST", f"/services/{eid}/sync"))[0] == 404


async def test_tokens_list_and_revoke_reach_the_route_table(manager: dict) -> None:  # noqa: F811
    alice: APIClient = manager["alice"]
    await _folder_with(alice, "echo", {"model-definition.yaml": ECHO_DEF})
    eid = await _service(alice)
    _, t1 = await alice.request("POST", f"/services/{eid}/token", {"duration": "1h"})
    _, t2 = await alice.request("POST", f"/services/{eid}/token", {"valid_until": int(time.time()) + 60})
    status, listed = await alice.request("GET", f"/services/{eid}/tokens")
    assert status == 200 and {t["token_id"] for t in listed["tokens"]} == {t1["token_id"], t2["token_id"]}
    assert "token" not in json.dumps(listed).replace("token_id", "").replace('"tokens"', "")
    status, body = await alice.request("DELETE", f"/services/{eid}/tokens/{t1['token_id']}")
    assert status == 200 and body == {"success": True}
    table = json.loads(await manager["store"].get(ROUTES_PREFIX + eid))
    assert table["revoked_token_ids"] == [t1["token_id"]]
    _, listed = await alice.request("GET", f"/services/{eid}/tokens")
    assert {t["token_id"]: t["revoked"] for t in listed["tokens"]} == {t1["token_id"]: True, t2["token_id"]: False}
    assert (await alice.request("DELETE", f"/services/{eid}/tokens/{uuid.uuid4()}"))[0] == 404
    assert (await manager["bob"].request("DELETE", f"/services/{eid}/tokens/{t2['token_id']}"))[0] == 404
    assert (await manager["bob"].request("GET", f"/services/{eid}/tokens"))[0] == 404


async def test_routing_operations_validate(manager: dict) -> None:  # noqa: F811
    alice: APIClient = manager["alice"]
    await _folder_with(alice, "echo", {"model-definition.yaml": ECHO_DEF})
    eid = await _service(alice)
    rid = str(uuid.uuid4())
    assert (await alice.request("PUT", f"/services/{eid}/routings/{rid}", {"traffic_ratio": 0.5}))[0] == 404
    assert (await alice.request("DELETE", f"/services/{eid}/routings/{rid}"))[0] == 404
    for bad in ({"traffic_ratio": -1}, {"traffic_ratio": "lots"}, {}):
        status, body = await alice.request("PUT", f"/services/{eid}/routings/{rid}", bad)
        assert status == 400 and "traffic_ratio" in body["detail"], body
    # a provisioning route cannot be downscaled
    _, info = await alice.request("GET", f"/services/{eid}")
    deadline = time.monotonic() + 10
    while not info["routes"] and time.monotonic() < deadline:
        _, info = await alice.request("GET", f"/services/{eid}")
    route = info["routes"][0]["route_id"]
    status, body = await alice.request("DELETE", f"/services/{eid}/routings/{route}")
    assert status == 400 and "provisioning" in body["detail"]
    status, body = await alice.request("PUT", f"/services/{eid}/routings/{route}", {"traffic_ratio": 2.5})
    assert status == 200
    _, info = await alice.request("GET", f"/services/{eid}")
    assert info["routes"][0]["traffic_ratio"] == 2.5
    assert (await manager["bob"].request("PUT", f"/services/{eid}/routings/{route}", {"traffic_ratio": 1}))[0] == 404


async def test_try_reports_failure_over_sse_without_an_agent(manager: dict) -> None:  # noqa: F811
    alice: APIClient = manager["alice"]
    await _folder_with(alice, "echo", {"model-definition.yaml": ECHO_DEF})
    status, body = await alice.request("POST", "/services/_/try", _create_body("nope"))
    assert status == 404
    status, body = await alice.request("POST", "/services/_/try", _create_body("echo", name="try-svc"))
    assert status == 200, body
    task_id = body["task_id"]
    path = f"/events/background-task?task_id={task_id}"
    assert (await manager["bob"].request("GET", path))[0] == 404
    events = []
    from manager.hmac_auth import sign_request

    headers = sign_request(alice.access_key, alice.secret_key, "GET", path, alice.host, "text/plain")
    async with manager["session"].get(manager["url"] + path, headers=headers,
                                      timeout=aiohttp.ClientTimeout(total=30)) as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        event = None
        async for line in resp.content:
            text = line.decode().rstrip("\n")
            if text.startswith("event: "):
                event = text[7:]
            elif text.startswith("data: "):
                events.append((event, json.loads(text[6:])))
    names = [e for e, _ in events]
    assert names[0] == "bgtask_updated" and "bgtask_failed" in names and names[-1] == "server_close"
    failed = dict(events)["bgtask_failed"]
    assert "cannot be placed" in failed["message"] and failed["task_id"] == task_id
    # the dry-run endpoint is hidden from listings and gets torn down
    _, listed = await alice.request("GET", "/services")
    assert listed == []


async def test_keypair_jwt_header_authenticates(manager: dict) -> None:  # noqa: F811
    alice: APIClient = manager["alice"]
    token = jwt.encode({"access_key": alice.access_key, "exp": int(time.time()) + 60}, alice.secret_key,
                       algorithm="HS256")
    async with manager["session"].get(manager["url"] + "/services", headers={"X-BackendAI-Token": token}) as r:
        assert r.status == 200
    for bad in (jwt.encode({"access_key": alice.access_key, "exp": int(time.time()) + 60}, "wrong" * 8,
                           algorithm="HS256"),
                jwt.encode({"access_key": alice.access_key, "exp": int(time.time()) - 1}, alice.secret_key,
                           algorithm="HS256"),
                jwt.encode({"access_key": alice.access_key}, alice.secret_key, algorithm="HS256"),
                "not-a-jwt"):
        async with manager["session"].get(manager["url"] + "/services", headers={"X-BackendAI-Token": bad}) as r:
            assert r.status == 401


async def test_openapi_documents_the_routes(manager: dict) -> None:  # noqa: F811
    async with manager["session"].get(manager["url"] + "/openapi.json") as resp:
        assert resp.status == 200
        spec = await resp.json()
    assert spec["openapi"].startswith("3.")
    for path in ("/services", "/services/_/try", "/services/{service_id}/scale",
                 "/services/{service_id}/routings/{route_id}", "/folders/{name}/files"):
        assert path in spec["paths"], path
    create = spec["paths"]["/services"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert create.endswith("/NewServiceRequest")
    assert "replicas" in spec["components"]["schemas"]["NewServiceRequest"]["properties"]


async def test_runtime_variants_synthesise_definitions(manager: dict) -> None:  # noqa: F811
    alice: APIClient = manager["alice"]
    await _folder_with(alice, "weights", {"config.json": "{}"})
    await _folder_with(alice, "gguf", {"tiny.gguf": "GGUF"})
    status, body = await alice.request("POST", "/services", _create_body("weights", name="custom-svc"))
    assert status == 400 and "runtime_variant" in body["detail"]
    status, info = await alice.request("POST", "/services", _create_body("weights", name="vllm-svc",
                                                                         runtime_variant="vllm"))
    assert status == 201, info
    assert info["runtime_variant"] == "vllm" and info["model_definition_path"] is None
    status, body = await alice.request("POST", "/services", _create_body("weights", name="llama-svc",
                                                                         runtime_variant="llamacpp"))
    assert status == 400 and "config.model" in body["detail"] and ".gguf" in body["detail"]
    status, info = await alice.request("POST", "/services", _create_body("gguf", name="llama-svc",
                                                                         runtime_variant="llamacpp"))
    assert status == 201, info
    bad = _create_body("gguf", name="bad-svc", runtime_variant="llamacpp")
    bad["config"]["environ"] = {"LLAMACPP_EXTRA_ARGS": "--x 'unclosed"}
    status, body = await alice.request("POST", "/services", bad)
    assert status == 400 and "LLAMACPP_EXTRA_ARGS" in body["detail"]
