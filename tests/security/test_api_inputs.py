"""Hostile input to the service API: every probe gets a 4xx RFC 7807 body naming the field and the reason."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from manager.hmac_auth import sign_request
from tests.security.api_harness import Manager, assert_problem, create_body, make_folder, running_manager


@pytest.fixture
async def manager(tmp_path: Path):
    async with running_manager(tmp_path) as m:
        await make_folder(m.alice, "echo")
        yield m


async def _service(m: Manager, name: str = "echo-svc") -> str:
    status, body = await m.alice.request("POST", "/services", create_body("echo", name))
    assert status == 201, body
    return body["endpoint_id"]


async def _raw(m: Manager, method: str, path: str, data: bytes, content_type: str = "application/json"
               ) -> tuple[int, Any]:
    return await m.alice.request(method, path, data=data, content_type=content_type)


# -- JSON bodies ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/services", "/services/_/search", "/admin/gql", "/folders"])
async def test_deeply_nested_json_is_a_400(manager: Manager, path: str) -> None:
    status, body = await _raw(manager, "POST", path, b"[" * 5000 + b"]" * 5000)
    assert_problem(status, body, 400, "body", "nest")
    status, body = await _raw(manager, "POST", path, b'{"a":' * 100 + b"1" + b"}" * 100)
    assert_problem(status, body, 400, "body", "nest")


async def test_deeply_nested_graphql_document_is_refused(manager: Manager) -> None:
    query = "{ endpoint_list(limit: 1, offset: 0, filter: " + "[" * 3000 + "]" * 3000 + ") { total_count } }"
    status, body = await manager.alice.request("POST", "/admin/gql", {"query": query})
    assert status in (200, 400), body
    assert "internal" not in str(body), body
    assert body.get("errors") or body.get("status") == 400, body


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1" * 5000])
async def test_nan_literals_are_not_json(manager: Manager, literal: bytes) -> None:
    data = b'{"name": "echo-nan", "replicas": 1, "config": {"model": "echo", "resources": {"mem": ' + literal + b"}}}"
    status, body = await _raw(manager, "POST", "/services", data)
    assert_problem(status, body, 400, "body")


@pytest.mark.parametrize("mem", ["NaN", "Infinity", "-1", "-1g", "1e999999", "sNaN", -5, "inf"])
async def test_bad_resource_values_on_create_and_patch(manager: Manager, mem: Any) -> None:
    status, body = await manager.alice.request("POST", "/services", create_body("echo", "echo-mem", config={
        **create_body("echo")["config"], "resources": {"cpu": "1", "mem": mem}}))
    assert_problem(status, body, 400, "resources.mem")
    service_id = await _service(manager)
    status, body = await manager.alice.request("PATCH", f"/services/{service_id}", {"resources": {"mem": mem}})
    assert_problem(status, body, 400, "resources.mem")


# -- tokens ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [("duration", 10**30), ("duration", "99999999999999999999yr"),
                                          ("duration", 1e308), ("valid_until", 10**30), ("valid_until", 2**63),
                                          ("duration", True), ("valid_until", True), ("duration", "1e5"),
                                          ("valid_until", 1.5e9), ("duration", 10**400), ("valid_until", 10**400),
                                          ("valid_until", -10**400), ("duration", "1" * 5000)])
async def test_token_lifetimes_are_bounded(manager: Manager, field: str, value: Any) -> None:
    service_id = await _service(manager)
    status, body = await manager.alice.request("POST", f"/services/{service_id}/token", {field: value})
    assert_problem(status, body, 400, field)


# -- strict integers ------------------------------------------------------------------------------------------

async def test_booleans_are_not_counts(manager: Manager) -> None:
    status, body = await manager.alice.request("POST", "/services", create_body("echo", "echo-bool", replicas=True))
    assert_problem(status, body, 400, "replicas")
    service_id = await _service(manager)
    for method, path, payload, field in [
            ("POST", f"/services/{service_id}/scale", {"to": True}, "to"),
            ("POST", f"/services/{service_id}/scale", {"to": 1.0}, "to"),
            ("PATCH", f"/services/{service_id}", {"replicas": False}, "replicas"),
            ("PATCH", f"/services/{service_id}", {"max_surge": True}, "max_surge"),
            ("POST", "/services/_/search", {"limit": True}, "limit"),
            ("POST", "/services/_/search", {"offset": False}, "offset")]:
        status, body = await manager.alice.request(method, path, payload)
        assert_problem(status, body, 400, field)


# -- names, mounts, environment -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["ｅｃｈｏ-svc", "есho-svc", "echo\u200bsvc", "échos", "abc", "-abc-", "a" * 25,
                                  "echo svc", "٣٣٣٣"])
async def test_service_names_are_ascii(manager: Manager, name: str) -> None:
    status, body = await manager.alice.request("POST", "/services", create_body("echo", name))
    assert_problem(status, body, 400, "name")


@pytest.mark.parametrize("dest", ["models", "/", "/proc", "/proc/self", "/sys/x", "/dev", "/etc/x", "/usr",
                                  "/usr/local/m", "/bin", "/lib", "/lib64/x", "/sbin", "/boot", "/run/x",
                                  "/var/run", "/var/run/docker.sock", "/models/../etc", "/models/", "//models",
                                  "/mo\x00dels", "/models:rw", "/var", "/tmp"])
async def test_mount_destinations_are_checked_at_creation(manager: Manager, dest: str) -> None:
    config = {**create_body("echo")["config"], "model_mount_destination": dest}
    status, body = await manager.alice.request("POST", "/services", create_body("echo", "echo-mnt", config=config))
    assert_problem(status, body, 400, "model_mount_destination")


async def test_extra_mount_destinations_are_checked(manager: Manager) -> None:
    config = {**create_body("echo")["config"], "extra_mounts": {str(uuid.uuid4()): {"mount_destination": "/etc"}}}
    status, body = await manager.alice.request("POST", "/services", create_body("echo", "echo-xmnt", config=config))
    assert_problem(status, body, 400, "extra_mounts")


@pytest.mark.parametrize("environ, word", [({"1BAD": "x"}, "environ"), ({"A-B": "x"}, "environ"),
                                           ({"A" * 300: "x"}, "environ"), ({"OK": "a\x00b"}, "environ.OK"),
                                           ({"BIG": "x" * 40_000}, "environ.BIG"),
                                           ({f"V{i}": "x" for i in range(300)}, "environ")])
async def test_environment_is_checked_at_creation_and_patch(manager: Manager, environ: dict[str, str],
                                                            word: str) -> None:
    config = {**create_body("echo")["config"], "environ": environ}
    status, body = await manager.alice.request("POST", "/services", create_body("echo", "echo-env", config=config))
    assert_problem(status, body, 400, word)
    service_id = await _service(manager)
    status, body = await manager.alice.request("PATCH", f"/services/{service_id}", {"environ": environ})
    assert_problem(status, body, 400, word)


@pytest.mark.parametrize("path", ["../etc/passwd", "/etc/passwd", "a/../../x"])
async def test_definition_path_traversal_names_the_field(manager: Manager, path: str) -> None:
    config = {**create_body("echo")["config"], "model_definition_path": path}
    status, body = await manager.alice.request("POST", "/services", create_body("echo", "echo-def", config=config))
    assert_problem(status, body, 400, "model_definition_path")
    service_id = await _service(manager)
    status, body = await manager.alice.request("PATCH", f"/services/{service_id}", {"model_definition_path": path})
    assert_problem(status, body, 400, "model_definition_path")


# -- lifecycle ------------------------------------------------------------------------------------------------

async def test_second_delete_is_a_404(manager: Manager) -> None:
    service_id = await _service(manager)
    status, _ = await manager.alice.request("DELETE", f"/services/{service_id}")
    assert status == 200
    status, body = await manager.alice.request("DELETE", f"/services/{service_id}")
    assert_problem(status, body, 404, service_id)


# -- folders --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [str(uuid.uuid4()), uuid.uuid4().hex, str(uuid.uuid4()).upper()])
async def test_uuid_like_folder_names_are_refused(manager: Manager, name: str) -> None:
    status, body = await manager.alice.request("POST", "/folders", {"name": name})
    assert_problem(status, body, 400, "name", "UUID")


async def _upload(m: Manager, files: dict[str, bytes]) -> tuple[int, Any]:
    form = aiohttp.FormData()
    for path, content in files.items():
        form.add_field("file", content, filename=path, content_type="application/octet-stream")
    return await m.alice.request("POST", "/folders/echo/files", data=form, content_type="multipart/form-data")


async def test_upload_name_lengths_are_bounded(manager: Manager) -> None:
    status, body = await _upload(manager, {"a" * 240: b"x"})
    assert_problem(status, body, 400, "path")
    status, body = await _upload(manager, {"é" * 130: b"x"})  # 260 bytes in UTF-8
    assert_problem(status, body, 400, "path")
    status, body = await _upload(manager, {"/".join(["d" * 100] * 12): b"x"})
    assert_problem(status, body, 400, "path")
    status, body = await _upload(manager, {"b" * 200: b"x"})
    assert status == 201, body


async def test_file_and_directory_collisions_are_409(manager: Manager) -> None:
    status, body = await _upload(manager, {"x": b"1"})
    assert status == 201, body
    status, body = await _upload(manager, {"x/child": b"2"})
    assert_problem(status, body, 409, "x/child")
    status, body = await _upload(manager, {"d/child": b"3"})
    assert status == 201, body
    status, body = await _upload(manager, {"d": b"4"})
    assert_problem(status, body, 409, "'d'")


@pytest.mark.parametrize("raw", [
    b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\nContent-Length: zz\r\n\r\nx\r\n--B--\r\n",
    b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename*=bogus''%%%\r\n\r\nx\r\n--B--\r\n",
    b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\nContent-Transfer-Encoding: rot13\r\n"
    b"\r\nx\r\n--B--\r\n",
    b"--B\r\n" + b"X-Junk: " + b"y" * 20000 + b"\r\n\r\nx\r\n--B--\r\n",
    b"--B\r\nNoColonHere\r\n\r\nx\r\n--B--\r\n",
    b"garbage without any boundary",
])
async def test_malformed_multipart_is_a_400(manager: Manager, raw: bytes) -> None:
    """Some of these aiohttp tolerates (201); none may be a 500."""
    status, body = await _raw(manager, "POST", "/folders/echo/files", raw, "multipart/form-data; boundary=B")
    if status != 201:
        assert_problem(status, body, (400, 413))


# -- transport ------------------------------------------------------------------------------------------------

async def test_over_long_urls_and_headers_are_4xx_without_details(manager: Manager) -> None:
    """aiohttp answers these before any middleware runs (text/plain, no traceback outside debug mode)."""
    for path, headers in [("/services/" + "a" * 20000, {}), ("/services", {"X-Long": "b" * 20000})]:
        async with manager.session.get(manager.url + path, headers={**headers, "Accept": "text/html"}) as resp:
            text = await resp.text()
            assert 400 <= resp.status < 500, text
            assert "Traceback" not in text and "<pre>" not in text, text


async def test_405_carries_allow(manager: Manager) -> None:
    headers = sign_request(manager.alice.access_key, manager.alice.secret_key, "PUT", "/services",
                           f"127.0.0.1:{manager.port}", "text/plain")
    async with manager.session.put(manager.url + "/services", headers=headers) as resp:
        assert resp.status == 405 and resp.content_type == "application/problem+json"
        assert set(resp.headers["Allow"].split(",")) >= {"GET", "POST"}, resp.headers
