"""/openapi.json documents what the handlers do: shapes, uuid ids, every parameter, and the error codes."""

from __future__ import annotations

from manager.api.openapi import build_spec

SPEC = build_spec()


def _op(method: str, path: str) -> dict:
    return SPEC["paths"][path][method]


def test_list_services_returns_an_array() -> None:
    schema = _op("get", "/services")["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema["type"] == "array" and schema["items"]["$ref"].endswith("/CompactServeInfo")


def test_ids_are_uuids() -> None:
    for path, item in SPEC["paths"].items():
        for op in item.values():
            for param in op.get("parameters", []):
                if param["name"].endswith("_id"):
                    assert param["schema"].get("format") == "uuid", (path, param)


def test_undocumented_parameters_and_bodies_are_documented() -> None:
    names = {p["name"] for p in _op("get", "/services")["parameters"]}
    assert {"name", "all"} <= names
    task = [p for p in _op("get", "/events/background-task")["parameters"] if p["name"] == "task_id"]
    assert task and task[0]["required"] and task[0]["in"] == "query"
    upload = _op("post", "/folders/{name}/files")["requestBody"]["content"]
    assert "multipart/form-data" in upload


def test_no_operation_hides_its_codes_behind_default() -> None:
    for path, item in SPEC["paths"].items():
        for method, op in item.items():
            codes = set(op["responses"]) - {"default"}
            assert any(c.startswith("2") for c in codes), (method, path)
            if op.get("security") != []:
                assert "401" in codes, (method, path)
            if "{" in path:
                assert "404" in codes, (method, path)
            if "requestBody" in op:
                assert {"400", "413"} <= codes, (method, path)
