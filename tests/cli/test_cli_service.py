"""Unit/integration tests of ``moorage service ...`` run in-process against a FAKE manager (see conftest.py),
which verifies every request's HMAC signature. The real manager is covered by end-to-end tests elsewhere."""

from __future__ import annotations

import json
import uuid

from fake_manager import ACCESS_KEY

from manager.cli.main import main


def test_create_sends_backendai_body_exactly(cluster, capsys):
    rc = main([
        "service", "create", "my-model", "2", "--name", "svc-one", "--image", "python:3.11-slim",
        "--runtime-variant", "vllm", "--public", "-r", "cpu=1", "-r", "mem=2g", "-r", "cuda.shares=0.5",
        "-e", "FOO=bar", "-e", "EMPTY=", "-e", "EQ=a=b", "--scaling-group", "gpu", "--model-definition-path",
        "defs/model.yaml",
    ])
    out = capsys.readouterr()
    assert rc == 0, out.err
    rec = cluster.last("POST")
    assert rec.path_qs == "/services"
    assert rec.content_type == "application/json"
    assert rec.access_key == ACCESS_KEY
    assert rec.body == {
        "name": "svc-one", "replicas": 2, "image": "python:3.11-slim", "runtime_variant": "vllm",
        "open_to_public": True, "group": "default", "domain": "default", "cluster_size": 1,
        "cluster_mode": "single-node",
        "config": {
            "model": "my-model", "model_mount_destination": "/models",
            "environ": {"FOO": "bar", "EMPTY": "", "EQ": "a=b"}, "scaling_group": "gpu",
            "resources": {"cpu": "1", "mem": "2g", "cuda.shares": "0.5"}, "resource_opts": {},
            "extra_mounts": {}, "model_definition_path": "defs/model.yaml",
        },
    }
    created = next(iter(cluster.services.values()))
    assert created["endpoint_id"] in out.out
    assert "svc-one" in out.out
    assert created["service_endpoint"] in out.out
    assert "Replicas" in out.out and "2" in out.out


def test_create_minimal_drops_none_values(cluster, capsys):
    assert main(["service", "create", "echo", "1", "--name", "echo-svc"]) == 0
    body = cluster.last("POST").body
    assert body == {
        "name": "echo-svc", "replicas": 1, "runtime_variant": "custom", "open_to_public": False,
        "group": "default", "domain": "default", "cluster_size": 1, "cluster_mode": "single-node",
        "config": {"model": "echo", "model_mount_destination": "/models", "environ": {},
                   "scaling_group": "default", "resources": {}, "resource_opts": {}, "extra_mounts": {}},
    }
    assert "image" not in body and "model_definition_path" not in body["config"]


def test_create_usage_errors_exit_2(cluster, capsys):
    assert main(["service", "create", "echo", "1"]) == 2  # --name is required
    assert main(["service", "create", "echo", "-1", "--name", "x-svc"]) == 2
    assert main(["service", "create", "echo", "1", "--name", "x-svc", "-r", "cpu"]) == 2
    assert cluster.requests == []


def test_list_prints_table(cluster, capsys):
    cluster.add_service("alpha-svc", replicas=2, status="HEALTHY")
    cluster.add_service("beta-svc", replicas=0, is_public=True)
    assert main(["service", "list"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["ID", "NAME", "STATUS"]
    assert any("alpha-svc" in line and "HEALTHY" in line for line in lines)
    assert any("beta-svc" in line for line in lines)
    assert cluster.last().path_qs == "/services"
    assert cluster.last().content_type == "text/plain"


def test_list_empty_and_json(cluster, capsys):
    assert main(["service", "list"]) == 0
    assert "No services" in capsys.readouterr().out
    cluster.add_service("alpha-svc")
    assert main(["service", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["name"] == "alpha-svc"


def test_info_resolves_name_with_signed_query_string(cluster, capsys):
    svc = cluster.add_service("my svc/1")  # needs URL encoding
    assert main(["service", "info", "my svc/1"]) == 0
    lookup, detail = cluster.requests[-2], cluster.requests[-1]
    assert lookup.method == "GET" and lookup.path_qs == "/services?name=my%20svc%2F1"
    assert detail.path_qs == f"/services/{svc['endpoint_id']}"
    assert "my svc/1" in capsys.readouterr().out


def test_info_by_uuid_skips_lookup(cluster, capsys):
    svc = cluster.add_service("uuid-svc")
    assert main(["service", "info", svc["endpoint_id"].upper()]) == 0
    assert [r.path_qs for r in cluster.requests] == [f"/services/{svc['endpoint_id']}"]


def test_info_shows_routes_and_failed_route_errors(cluster, capsys):
    route_ok, route_bad = str(uuid.uuid4()), str(uuid.uuid4())
    cluster.add_service(
        "routes-svc", replicas=2, status="DEGRADED", retries=1,
        active_routes=[{"route_id": route_ok, "session_id": "sess-1", "traffic_ratio": 1.0}],
        routes=[
            {"route_id": route_ok, "session_id": "sess-1", "lifecycle": "running", "health": "healthy",
             "traffic": "active", "traffic_ratio": 1.0, "host": "127.0.0.1", "port": 30001, "agent": "agent-1",
             "error_data": None},
            {"route_id": route_bad, "session_id": "sess-2", "lifecycle": "failed_to_start",
             "health": "not_checked", "traffic": "inactive", "traffic_ratio": 1.0, "host": None, "port": None,
             "agent": "agent-2",
             "error_data": {"type": "creation_failed", "message": "replica exited with status 1",
                            "stderr_tail": "Traceback (most recent call last):\nModuleNotFoundError: "
                                           "No module named 'llama_cpp'\n"}},
        ],
    )
    assert main(["service", "info", "routes-svc"]) == 0
    out = capsys.readouterr().out
    assert "DEGRADED" in out
    assert "127.0.0.1:30001" in out and "healthy" in out and "running" in out
    assert "failed_to_start" in out
    assert "replica exited with status 1" in out
    assert "No module named 'llama_cpp'" in out
    assert "Traceback (most recent call last):" in out
    assert out.index("replica exited with status 1") < out.index("No module named")


def test_info_json_prints_exactly_what_was_received(cluster, capsys):
    svc = cluster.add_service("json-svc", status="HEALTHY", routes=[], retries=0, extra={"ü": [1, 2.5, None]})
    assert main(["service", "info", "json-svc", "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out) == svc
    assert list(json.loads(out)) == list(svc)  # key order preserved
    assert out.startswith("{\n  ")


def test_unknown_name_is_an_error(cluster, capsys):
    cluster.add_service("other-svc")
    assert main(["service", "info", "missing-svc"]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip() == "error: no service named missing-svc"
    assert captured.out == ""


def test_ambiguous_name_is_an_error(cluster, capsys):
    cluster.add_service("twin-svc")
    cluster.add_service("twin-svc")
    assert main(["service", "rm", "twin-svc"]) == 1
    assert "use the service id" in capsys.readouterr().err
    assert all(r.method == "GET" for r in cluster.requests)


def test_scale(cluster, capsys):
    svc = cluster.add_service("scale-svc")
    assert main(["service", "scale", "scale-svc", "3"]) == 0
    rec = cluster.last("POST")
    assert rec.path_qs == f"/services/{svc['endpoint_id']}/scale"
    assert rec.body == {"to": 3}
    assert "3" in capsys.readouterr().out


def test_token_prints_only_the_token(cluster, capsys):
    svc = cluster.add_service("token-svc")
    assert main(["service", "token", "token-svc", "--duration", "1h"]) == 0
    assert capsys.readouterr().out == cluster.token + "\n"
    rec = cluster.last("POST")
    assert rec.path_qs == f"/services/{svc['endpoint_id']}/token"
    assert rec.body == {"duration": "1h"}


def test_token_valid_until_and_usage(cluster, capsys):
    cluster.add_service("token-svc")
    assert main(["service", "token", "token-svc", "--valid-until", "1900000000"]) == 0
    assert cluster.last("POST").body == {"valid_until": 1900000000}
    capsys.readouterr()
    assert main(["service", "token", "token-svc"]) == 2
    assert main(["service", "token", "token-svc", "--duration", "1h", "--valid-until", "1"]) == 2
    assert main(["service", "token", "token-svc", "--duration", "soon"]) == 2


def test_rm(cluster, capsys):
    svc = cluster.add_service("rm-svc")
    assert main(["service", "rm", svc["endpoint_id"]]) == 0
    rec = cluster.last()
    assert rec.method == "DELETE" and rec.path_qs == f"/services/{svc['endpoint_id']}"
    assert rec.content_type == "text/plain"
    assert cluster.services == {}


def test_problem_json_error_goes_to_stderr_without_traceback(cluster, capsys):
    missing = str(uuid.uuid4())
    assert main(["service", "info", missing]) == 1
    captured = capsys.readouterr()
    assert captured.err == "error: endpoint not found\n"
    assert "Traceback" not in captured.err
    assert captured.out == ""


def test_problem_without_detail_uses_msg_then_title(cluster, capsys):
    from aiohttp import web

    cluster.overrides[("POST", "/services")] = web.Response(
        status=400, content_type="application/problem+json",
        text=json.dumps({"type": "https://api.backend.ai/probs/invalid-api-params", "title": "Invalid API "
                         "parameters.", "error_code": "api_invalid-parameters", "msg": "name: too short"}))
    assert main(["service", "create", "m", "1", "--name", "ab"]) == 1
    assert capsys.readouterr().err == "error: name: too short\n"
    cluster.overrides[("GET", "/services")] = web.Response(
        status=403, content_type="application/problem+json", text=json.dumps({"title": "Forbidden"}))
    assert main(["service", "list"]) == 1
    assert capsys.readouterr().err == "error: Forbidden\n"


def test_non_json_server_error(cluster, capsys):
    from aiohttp import web

    cluster.overrides[("GET", "/services")] = web.Response(status=502, text="Bad Gateway from proxy")
    assert main(["service", "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: HTTP 502") and "Bad Gateway from proxy" in err


def test_create_sends_cors_origins_and_outbound_only_when_given(cluster, capsys):
    assert main(["service", "create", "echo", "1", "--name", "cors-svc", "--cors-origin", "https://chat.example.com",
                 "--cors-origin", "http://localhost:3000", "--allow-outbound"]) == 0
    body = cluster.last("POST").body
    assert body["cors_allowed_origins"] == ["https://chat.example.com", "http://localhost:3000"]
    assert body["network_outbound"] is True
    assert main(["service", "create", "echo", "1", "--name", "plain-svc"]) == 0
    body = cluster.last("POST").body  # the Backend.AI body exactly, as before (no new keys)
    assert "cors_allowed_origins" not in body and "network_outbound" not in body


def test_update_sets_and_clears_cors_origins_and_outbound(cluster, capsys):
    svc = cluster.add_service("upd-svc")
    assert main(["service", "update", "upd-svc", "--cors-origin", "*", "--allow-outbound"]) == 0
    rec = cluster.last("PATCH")
    assert rec.path_qs == f"/services/{svc['endpoint_id']}"
    assert rec.body == {"cors_allowed_origins": ["*"], "network_outbound": True}
    assert main(["service", "update", "upd-svc", "--clear-cors-origins", "--deny-outbound"]) == 0
    assert cluster.last("PATCH").body == {"cors_allowed_origins": [], "network_outbound": False}
    assert main(["service", "update", "upd-svc", "--allow-outbound", "--deny-outbound"]) == 2
    assert main(["service", "update", "upd-svc", "--cors-origin", "*", "--clear-cors-origins"]) == 2


def test_info_shows_settings_and_warns_about_unsandboxed_routes(cluster, capsys):
    boxed, bare = str(uuid.uuid4()), str(uuid.uuid4())
    route = {"session_id": "s", "lifecycle": "running", "health": "healthy", "traffic": "active",
             "traffic_ratio": 1.0, "host": "127.0.0.1", "port": 30001, "error_data": None}
    cluster.add_service("mixed-svc", cors_allowed_origins=["https://chat.example.com"], network_outbound=True,
                        routes=[{**route, "route_id": boxed, "agent": "a1", "sandboxed": True},
                                {**route, "route_id": bare, "agent": "a2", "sandboxed": False}])
    assert main(["service", "info", "mixed-svc"]) == 0
    out = capsys.readouterr().out
    assert "https://chat.example.com" in out
    assert any("Outbound network" in line and "allowed" in line for line in out.splitlines()), out
    warnings = [line for line in out.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and bare in warnings[0] and "a2" in warnings[0] and "sandbox" in warnings[0], out

    cluster.add_service("old-svc", routes=[{**route, "route_id": boxed, "agent": "a1"}])  # an older manager
    assert main(["service", "info", "old-svc"]) == 0
    out = capsys.readouterr().out
    assert "WARNING" not in out and "Outbound" not in out and "CORS" not in out
