"""The console's API on a real manager and PostgreSQL: the folder explorer (listing, download, mkdir, move,
delete, chunked and resumable uploads of large files and directory trees), definition checks, the Model Store and
chat conversations, each with its ownership rule (another user's objects are a 404)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from common.status import UserRole
from manager.bootstrap import create_user
from manager.context import CTX
from manager.hmac_auth import sign_request
from tests.manager.apiclient import APIClient
from tests.manager.test_api import ECHO_DEF
from tests.security.api_harness import Manager, assert_problem, make_folder, running_manager

CHUNK = 256 * 1024


SECTIONS: dict[str, Any] = {
    "files": {"max_chunk_bytes": CHUNK},
    "conversations": {"max_per_user": 3, "max_messages": 5, "max_content_chars": 1000,
                      "max_conversation_bytes": 4096}}


@pytest.fixture
async def mgr(tmp_path: Path, pg_url: str) -> AsyncIterator[Manager]:
    async with running_manager(tmp_path, pg_url, **SECTIONS) as m:
        yield m


@pytest.fixture(params=["postgresql", "sqlite"])
def any_db_url(request: pytest.FixtureRequest) -> str | None:
    """PostgreSQL, and SQLite (None: the harness's default) as in `moorage up`."""
    return request.getfixturevalue("pg_url") if request.param == "postgresql" else None


@pytest.fixture
async def mgr_any_db(any_db_url: str | None, tmp_path: Path) -> AsyncIterator[Manager]:
    """For what the database does (conversations, service rows): both databases."""
    async with running_manager(tmp_path, any_db_url, **SECTIONS) as m:
        yield m


async def raw(client: APIClient, method: str, path: str, data: bytes | None = None,
              content_type: str = "application/octet-stream") -> tuple[int, Any, bytes]:
    """A signed request with a raw body; (status, headers, body)."""
    headers = sign_request(client.access_key, client.secret_key, method, path, client.host, content_type)
    async with client.session.request(method, client.base_url + path, data=data, headers=headers) as resp:
        return resp.status, resp.headers, await resp.read()


def folder_root(m: Manager, name_or_id: str, folders: list[dict[str, Any]]) -> Path:
    folder = next(f for f in folders if name_or_id in (f["name"], f["id"]))
    return Path(m.app[CTX].config.manager.storage_root) / folder["id"].replace("-", "")


async def upload(client: APIClient, folder: str, path: str, data: bytes, chunk: int = CHUNK,
                 force: bool = False) -> tuple[int, Any]:
    """A whole chunked upload; the last answer."""
    status, body = await client.request("POST", f"/folders/{folder}/uploads",
                                        {"path": path, "size": len(data), "force": force})
    if status != 201 or body["complete"]:
        return status, body
    upload_id, offset = body["upload_id"], 0
    while offset < len(data):
        status, _, raw_body = await raw(client, "PUT", f"/folders/{folder}/uploads/{upload_id}?offset={offset}",
                                        data[offset:offset + chunk])
        body = json.loads(raw_body)
        if status != 200:
            return status, body
        assert body["offset"] == min(offset + chunk, len(data))
        offset = body["offset"]
    return status, body


async def test_folders_by_usage_mode(mgr: Manager) -> None:
    for name, mode in (("weights", "model"), ("scratch", "general"), ("inputs", "data")):
        status, body = await mgr.alice.request("POST", "/folders", {"name": name, "usage_mode": mode})
        assert status == 201 and body["usage_mode"] == mode
    status, body = await mgr.alice.request("POST", "/folders", {"name": "odd", "usage_mode": "weird"})
    assert_problem(status, body, 400, "usage_mode")
    status, body = await mgr.alice.request("GET", "/folders?usage_mode=general")
    assert status == 200 and [f["name"] for f in body] == ["scratch"]
    status, body = await mgr.alice.request("GET", "/folders")
    assert {f["name"]: f["usage_mode"] for f in body} == {"weights": "model", "scratch": "general",
                                                          "inputs": "data"}
    status, body = await mgr.bob.request("GET", "/folders?all=true")
    assert status == 200 and body == []  # a user's all=true is still only their own
    status, body = await mgr.alice.request("GET", "/folders?usage_mode=x")
    assert_problem(status, body, 400, "usage_mode")


async def test_explorer_large_file_directories_download_move_delete(mgr: Manager) -> None:
    alice = mgr.alice
    await alice.request("POST", "/folders", {"name": "box"})
    big = os.urandom(3 * CHUNK + 12345)  # four chunks, the last one short
    status, body = await upload(alice, "box", "weights/model.bin", big)
    assert status == 200 and body["complete"] and body["path"] == "weights/model.bin", body
    status, body = await alice.request("POST", "/folders/box/mkdir", {"path": "a/b/c"})
    assert status == 201 and body["path"] == "a/b/c"
    status, body = await alice.request("POST", "/folders/box/mkdir", {"path": "a/b/c"})
    assert_problem(status, body, 409, "exists")
    status, _ = await alice.request("POST", "/folders/box/mkdir", {"path": "a/b/c", "exist_ok": True})
    assert status == 201
    status, body = await alice.request("POST", "/folders/box/mkdir", {"path": "p/q", "parents": False})
    assert_problem(status, body, 404, "parent")
    status, body = await alice.request("POST", "/folders/box/mkdir", {"path": "a/b/d", "parents": False})
    assert status == 201
    status, body = await alice.request("POST", "/folders/box/mkdir", {"path": "weights/model.bin/x"})
    assert_problem(status, body, 409, "a file is in the way")

    _, folders = await alice.request("GET", "/folders")
    root = folder_root(mgr, "box", folders)
    assert (root / "weights/model.bin").read_bytes() == big
    assert stat.S_IMODE((root / "weights/model.bin").stat().st_mode) == 0o644  # replicas read it as another uid
    for d in ("weights", "a", "a/b", "a/b/c"):
        assert stat.S_IMODE((root / d).stat().st_mode) == 0o755, d

    status, body = await alice.request("GET", "/folders/box/files")
    assert status == 200 and [(e["name"], e["type"]) for e in body["entries"]] == [("a", "dir"), ("weights", "dir")]
    status, body = await alice.request("GET", "/folders/box/files?path=weights")
    assert body["entries"][0]["size"] == len(big) and body["entries"][0]["type"] == "file"
    assert body["entries"][0]["mtime"]

    status, headers, data = await raw(alice, "GET", "/folders/box/download?path=weights/model.bin")
    assert status == 200 and data == big
    assert headers["Content-Disposition"].startswith('attachment; filename="model.bin"')
    assert int(headers["Content-Length"]) == len(big)
    status, headers, data = await raw(alice, "HEAD", "/folders/box/download?path=weights/model.bin")
    assert status == 200 and data == b"" and int(headers["Content-Length"]) == len(big)
    status, _ = await alice.request("GET", "/folders/box/files")  # the connection is still in step
    assert status == 200
    status, _, data = await raw(alice, "GET", "/folders/box/download?path=weights")
    assert status == 400 and b"not a regular file" in data
    status, _, data = await raw(alice, "GET", "/folders/box/download?path=nope")
    assert status == 404

    status, body = await alice.request("POST", "/folders/box/move-file",
                                       {"src": "weights/model.bin", "dst": "a/b/renamed.bin"})
    assert status == 200 and body["path"] == "a/b/renamed.bin"
    assert (root / "a/b/renamed.bin").read_bytes() == big and not (root / "weights/model.bin").exists()
    status, body = await alice.request("POST", "/folders/box/move-file", {"src": "a", "dst": "a/b/inside"})
    assert_problem(status, body, 400, "inside itself")
    status, body = await alice.request("POST", "/folders/box/move-file", {"src": "a/b/renamed.bin", "dst": "a/b"})
    assert_problem(status, body, 409, "exists")
    status, body = await alice.request("POST", "/folders/box/move-file", {"src": "ghost", "dst": "g2"})
    assert_problem(status, body, 404, "src")

    status, _, data = await raw(alice, "DELETE", "/folders/box/files?path=a")
    assert status == 409 and b"recursive" in data
    status, _, _ = await raw(alice, "DELETE", "/folders/box/files?path=a&recursive=true")
    assert status == 204 and not (root / "a").exists()
    status, _, _ = await raw(alice, "DELETE", "/folders/box/files?path=weights")
    assert status == 204
    status, body = await alice.request("GET", "/folders/box/files")
    assert body["entries"] == [] and body["total"] == 0


async def test_listing_pages(mgr: Manager) -> None:
    await make_folder(mgr.alice, "many", {f"f{i:02}.txt": str(i) for i in range(25)} | {"sub/x": "x"})
    status, body = await mgr.alice.request("GET", "/folders/many/files?limit=10")
    assert status == 200 and body["total"] == 26 and len(body["entries"]) == 10
    assert body["entries"][0]["name"] == "sub"  # directories first
    status, body = await mgr.alice.request("GET", "/folders/many/files?limit=10&offset=20")
    assert [e["name"] for e in body["entries"]] == [f"f{i:02}.txt" for i in range(19, 25)]
    status, body = await mgr.alice.request("GET", "/folders/many/files?limit=100000")
    assert_problem(status, body, 400, "limit")
    status, body = await mgr.alice.request("GET", "/folders/many/files?path=f01.txt")
    assert_problem(status, body, 400, "not a directory")


async def test_directory_tree_upload_creates_parents(mgr: Manager) -> None:
    await mgr.alice.request("POST", "/folders", {"name": "tree"})
    tree = {"model/config.json": b"{}", "model/tokenizer/vocab.txt": b"a\nb\n", "model/tokenizer/merges/1.txt":
            os.urandom(CHUNK + 1), "README.md": b"# hi", "empty/zero.bin": b""}
    for path, data in tree.items():
        status, body = await upload(mgr.alice, "tree", path, data)
        assert status in (200, 201) and body["complete"], (path, body)
    _, folders = await mgr.alice.request("GET", "/folders")
    root = folder_root(mgr, "tree", folders)
    for path, data in tree.items():
        assert (root / path).read_bytes() == data, path
    status, body = await mgr.alice.request("GET", "/folders/tree/files?path=model/tokenizer")
    assert [e["name"] for e in body["entries"]] == ["merges", "vocab.txt"]
    assert not list((root.parent / ".uploads").rglob("*.part"))  # nothing staged is left


async def test_chunked_upload_resumes_and_refuses_bad_chunks(mgr: Manager) -> None:
    alice, bob = mgr.alice, mgr.bob
    await alice.request("POST", "/folders", {"name": "res"})
    data = os.urandom(2 * CHUNK + 7)
    status, body = await alice.request("POST", "/folders/res/uploads", {"path": "x/y.bin", "size": len(data)})
    assert status == 201 and body["offset"] == 0 and body["max_chunk_bytes"] == CHUNK
    up = f"/folders/res/uploads/{body['upload_id']}"
    status, _, _ = await raw(alice, "PUT", f"{up}?offset=0", data[:CHUNK])
    assert status == 200
    # the answer was "lost": the client sends the same chunk again and learns where to continue
    status, _, raw_body = await raw(alice, "PUT", f"{up}?offset=0", data[:CHUNK])
    problem = json.loads(raw_body)
    assert status == 409 and problem["data"]["offset"] == CHUNK and "continues at" in problem["detail"]
    status, body = await alice.request("GET", up)
    assert status == 200 and body["offset"] == CHUNK and body["size"] == len(data) and not body["complete"]
    status, _, raw_body = await raw(alice, "PUT", f"{up}?offset={CHUNK}", data[CHUNK:2 * CHUNK + 1])
    assert status == 413 and b"max_chunk_bytes" in raw_body
    status, body = await alice.request("GET", up)
    assert body["offset"] == CHUNK  # a refused chunk leaves nothing behind
    status, _, raw_body = await raw(alice, "PUT", f"{up}", data[CHUNK:])
    assert status == 400 and b"offset" in raw_body
    # another user cannot see, feed or cancel it (the folder is not theirs: 404)
    status, body = await bob.request("GET", up)
    assert status == 404
    status, _, _ = await raw(bob, "PUT", f"{up}?offset={CHUNK}", data[CHUNK:2 * CHUNK])
    assert status == 404
    status, _, _ = await raw(bob, "DELETE", up)
    assert status == 404
    status, _, _ = await raw(alice, "PUT", f"{up}?offset={CHUNK}", data[CHUNK:2 * CHUNK])
    assert status == 200
    status, _, raw_body = await raw(alice, "PUT", f"{up}?offset={2 * CHUNK}", data[2 * CHUNK:] + b"extra")
    assert status == 413 and b"past the upload's size" in raw_body
    status, _, raw_body = await raw(alice, "PUT", f"{up}?offset={2 * CHUNK}", data[2 * CHUNK:])
    assert status == 200 and json.loads(raw_body)["complete"]
    status, body = await alice.request("GET", up)
    assert status == 404  # finished uploads are gone
    status, _, got = await raw(alice, "GET", "/folders/res/download?path=x/y.bin")
    assert got == data

    status, body = await alice.request("POST", "/folders/res/uploads", {"path": "gone.bin", "size": 10})
    up = f"/folders/res/uploads/{body['upload_id']}"
    status, _, _ = await raw(alice, "DELETE", up)
    assert status == 204
    status, body = await alice.request("GET", up)
    assert status == 404
    status, body = await alice.request("POST", "/folders/res/uploads", {"path": "x", "size": 1})
    assert_problem(status, body, 400, "directory")
    status, body = await alice.request("POST", "/folders/res/uploads", {"path": "huge", "size": 10**15})
    assert_problem(status, body, 413, "max_upload_bytes")
    status, body = await alice.request("POST", "/folders/res/uploads", {"path": "neg", "size": -1})
    assert_problem(status, body, 400, "size")


async def test_definition_checks_and_editor_saves(mgr: Manager) -> None:
    alice = mgr.alice
    await alice.request("POST", "/folders", {"name": "defs"})
    bad_yaml = "models:\n  - name: echo\n    model_path: /models\n    service:\n      port: 70000\n"
    status, body = await alice.request("POST", "/folders/defs/definitions/validate",
                                       {"path": "model-definition.yaml", "content": bad_yaml})
    assert status == 200 and body["kind"] == "model" and not body["valid"]
    assert body["errors"] == [{"field": "models.0.service.port", "reason": "Input should be less than 65536",
                               "line": 5}]
    status, body = await alice.request("POST", "/folders/defs/definitions/validate",
                                       {"path": "model-definition.yaml", "content": ECHO_DEF})
    assert status == 200 and body == {"kind": "model", "valid": True, "errors": [], "definition": None}
    good_toml = ('[environment]\nimage = "img:1"\n[resource_slots]\ncpu = 2\nmem = "4g"\n[environ]\nA = "1"\n'
                 '[vllm.environ]\nB = "2"\n')
    status, body = await alice.request("POST", "/folders/defs/definitions/validate",
                                       {"path": "service-definition.toml", "content": good_toml})
    assert status == 200 and body["valid"], body  # the launcher pre-fills its form from the parsed definition
    assert body["definition"]["environment"]["image"] == "img:1" and body["definition"]["environ"] == {"A": "1"}
    assert body["definition"]["resource_slots"] == {"cpu": 2, "mem": "4g"}
    assert body["definition"]["vllm"] == {"environ": {"B": "2"}}
    bad_toml = '[environment]\nimage = "x"\n\n[vllm]\nbogus = 1\n'
    status, body = await alice.request("POST", "/folders/defs/definitions/validate",
                                       {"path": "sub/service-definition.toml", "content": bad_toml})
    assert body["kind"] == "service" and body["errors"][0]["field"] == "vllm.bogus" and body["errors"][0]["line"] == 5
    status, body = await alice.request("POST", "/folders/defs/definitions/validate",
                                       {"path": "service-definition.toml", "content": "a = \n"})
    assert body["errors"][0]["field"] == "(toml)" and body["errors"][0]["line"] == 1
    status, body = await alice.request("POST", "/folders/defs/definitions/validate",
                                       {"path": "notes.txt", "content": "x"})
    assert_problem(status, body, 400, "path")
    status, body = await mgr.bob.request("POST", "/folders/defs/definitions/validate",
                                         {"path": "model-definition.yaml", "content": ECHO_DEF})
    assert status == 404

    # saving through the editor: refused with the same errors, unless force
    status, _, raw_body = await raw(alice, "PUT", "/folders/defs/content?path=model-definition.yaml",
                                    bad_yaml.encode())
    problem = json.loads(raw_body)
    assert status == 400 and problem["type"].endswith("/model-definition-validation-failed")
    assert problem["data"]["errors"][0]["line"] == 5 and "models.0.service.port" in problem["detail"]
    status, body = await alice.request("GET", "/folders/defs/files")
    assert body["entries"] == []
    status, _, _ = await raw(alice, "PUT", "/folders/defs/content?path=model-definition.yaml&force=true",
                             bad_yaml.encode())
    assert status == 200
    status, _, _ = await raw(alice, "PUT", "/folders/defs/content?path=model-definition.yaml", ECHO_DEF.encode())
    assert status == 200
    status, _, got = await raw(alice, "GET", "/folders/defs/download?path=model-definition.yaml")
    assert got == ECHO_DEF.encode()
    status, _, _ = await raw(alice, "PUT", "/folders/defs/content?path=notes/readme.txt", b"anything: [")
    assert status == 200
    # the same check on a chunked upload of a definition file
    status, body = await upload(alice, "defs", "service-definition.toml", bad_toml.encode())
    assert_problem(status, body, 400, "vllm.bogus")
    status, body = await upload(alice, "defs", "service-definition.toml", bad_toml.encode(), force=True)
    assert status == 200 and body["complete"]


SERVICE_DEF = """[environment]
image = "python:3.11"

[resource_slots]
cpu = "0.5"
mem = "256m"
"""
STORE_DEF = ECHO_DEF + """    metadata:
      title: Echo model
      description: Answers what it is sent
      author: Moorage
      label: [demo, echo]
"""


async def test_model_store_cards_and_run(mgr_any_db: Manager) -> None:
    mgr = mgr_any_db
    alice, bob = mgr.alice, mgr.bob
    await make_folder(alice, "echo-store", {"model-definition.yaml": STORE_DEF, "service-definition.toml":
                                            SERVICE_DEF, "echo_server.py": "print(1)"})
    await make_folder(alice, "only-model", {"model-definition.yaml": ECHO_DEF})
    await make_folder(alice, "broken-store", {"model-definition.yaml": "models: [\n",
                                              "service-definition.toml": SERVICE_DEF})
    status, body = await alice.request("POST", "/folders", {"name": "gen", "usage_mode": "general"})
    status, body = await alice.request("GET", "/model-store")
    assert status == 200 and body["total"] == 2, body
    cards = {c["name"]: c for c in body["items"]}
    card = cards["echo-store"]
    assert card["title"] == "Echo model" and card["description"] == "Answers what it is sent"
    assert card["labels"] == ["demo", "echo"] and card["model_name"] == "echo"
    assert card["runtime_variant"] == "custom" and card["image"] == "python:3.11"
    assert card["resources"] == {"cpu": "0.5", "mem": "256m"} and card["errors"] == []
    assert cards["broken-store"]["errors"][0]["field"].startswith("model-definition.yaml:")
    status, body = await bob.request("GET", "/model-store")
    assert status == 200 and body["items"] == []

    status, body = await bob.request("POST", f"/model-store/{card['folder_id']}/run", {})
    assert status == 404
    status, body = await alice.request("POST", f"/model-store/{card['folder_id']}/run", {})
    assert status == 201 and body["name"] == "echo-store" and body["model_id"] == card["folder_id"], body
    assert body["resource_slots"]["cpu"] == "0.5"
    status, svc = await alice.request("GET", f"/services/{body['endpoint_id']}")
    assert status == 200 and svc["replicas"] == 1 and svc["runtime_variant"] == "custom"
    status, body = await alice.request("POST", f"/model-store/{card['folder_id']}/run", {"replicas": 2})
    assert status == 201 and body["name"] == "echo-store-2" and body["replicas"] == 2
    status, body = await alice.request("POST", f"/model-store/{card['folder_id']}/run", {"name": "echo-store"})
    assert_problem(status, body, 409, "name")
    status, body = await alice.request("POST", f"/model-store/{card['folder_id']}/run", {"name": "x"})
    assert_problem(status, body, 400, "name")
    status, body = await alice.request("POST", f"/model-store/{card['folder_id']}/run", {"token": "x"})
    assert_problem(status, body, 400, "token")
    status, folders = await alice.request("GET", "/folders")
    only = next(f for f in folders if f["name"] == "only-model")
    status, body = await alice.request("POST", f"/model-store/{only['id']}/run", {})
    assert_problem(status, body, 400, "Model Store")
    status, body = await alice.request("POST", "/model-store/not-a-uuid/run", {})
    assert_problem(status, body, 400, "folder_id")


async def test_conversations_crud_export_bounds_and_ownership(mgr_any_db: Manager) -> None:
    mgr = mgr_any_db
    alice, bob = mgr.alice, mgr.bob
    new = {"title": "First chat", "models": [{"service_id": "6c1d8f3e-7c1b-4d5e-9a51-3c0c2f0e8a11", "model": "echo"},
                                            {"base_url": "https://api.example.com/v1", "model": "gpt"}],
           "parameters": {"system_prompt": "Be brief.", "temperature": 0.7, "top_p": 0.9, "max_tokens": 256},
           "messages": [{"role": "user", "content": "Hi <b>there</b>"}]}
    status, conv = await alice.request("POST", "/conversations", new)
    assert status == 201 and conv["title"] == "First chat" and conv["message_count"] == 1
    cid = conv["id"]
    status, body = await alice.request("PATCH", f"/conversations/{cid}", {"append": [
        {"role": "assistant", "content": "Hello!", "model_index": 0,
         "stats": {"ttft_ms": 120, "tokens_per_second": 35.25, "tokens": 3}}]})
    assert status == 200 and body["message_count"] == 2 and body["messages"][1]["stats"]["ttft_ms"] == 120
    status, body = await alice.request("PATCH", f"/conversations/{cid}", {"title": "Renamed"})
    assert status == 200 and body["title"] == "Renamed" and body["message_count"] == 2
    status, body = await alice.request("GET", f"/conversations/{cid}")
    assert body["parameters"]["system_prompt"] == "Be brief." and body["models"][1]["base_url"].startswith("https")
    assert body["updated_at"] >= body["created_at"]

    status, headers, data = await raw(alice, "GET", f"/conversations/{cid}/export?format=json")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert 'filename="Renamed.json"' in headers["Content-Disposition"]
    exported = json.loads(data)
    assert exported["messages"] == body["messages"] and exported["title"] == "Renamed"
    status, headers, data = await raw(alice, "GET", f"/conversations/{cid}/export?format=markdown")
    text = data.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/markdown")
    assert text.startswith("# Renamed\n") and "## User\n\nHi <b>there</b>" in text
    assert "## Assistant (model 1 · TTFT 120 ms · 35.2 tokens/s)\n\nHello!" in text
    assert "temperature: 0.7" in text and "## System prompt\n\nBe brief." in text
    assert "custom API https://api.example.com/v1" in text
    status, _, data = await raw(alice, "GET", f"/conversations/{cid}/export?format=pdf")
    assert status == 400 and b"format" in data

    # replacing the messages (e.g. editing and regenerating)
    status, body = await alice.request("PATCH", f"/conversations/{cid}", {"messages": [
        {"role": "user", "content": "Again"}]})
    assert status == 200 and body["message_count"] == 1 and body["messages"][0]["content"] == "Again"

    # another user: every verb is a 404, and their list is empty
    for method, path, payload in (("GET", f"/conversations/{cid}", None),
                                  ("PATCH", f"/conversations/{cid}", {"title": "mine"}),
                                  ("DELETE", f"/conversations/{cid}", None),
                                  ("GET", f"/conversations/{cid}/export?format=json", None)):
        status, body = await bob.request(method, path, payload)
        assert status == 404, (method, path, body)
    status, body = await bob.request("GET", "/conversations?all=true")
    assert status == 200 and body["items"] == [] and body["total"] == 0
    status, body = await alice.request("GET", f"/conversations/{cid}")
    assert body["title"] == "Renamed"

    # bounds: a token is never stored, sizes and counts are bounded
    status, body = await alice.request("POST", "/conversations", {"models": [
        {"base_url": "https://api.example.com/v1", "token": "sk-secret"}]})
    assert_problem(status, body, 400, "token")
    assert "sk-secret" not in json.dumps(body)
    status, body = await alice.request("POST", "/conversations", {"models": [{"base_url": "javascript:alert(1)"}]})
    assert_problem(status, body, 400, "base_url")
    status, body = await alice.request("POST", "/conversations", {"title": "   "})
    assert_problem(status, body, 400, "title", "blank")
    status, body = await alice.request("PATCH", f"/conversations/{cid}", {"title": ""})
    assert_problem(status, body, 400, "title")
    status, body = await alice.request("PATCH", f"/conversations/{cid}", {"append": [
        {"role": "user", "content": "x" * 1001}]})
    assert_problem(status, body, 400, "append.0.content")
    status, body = await alice.request("PATCH", f"/conversations/{cid}", {"append": [
        {"role": "user", "content": "m"}] * 5})
    assert_problem(status, body, 400, "max_messages")
    status, body = await alice.request("PATCH", f"/conversations/{cid}", {"append": [
        {"role": "user", "content": "y" * 1000}] * 4})
    assert_problem(status, body, 413, "max_conversation_bytes")
    status, body = await alice.request("PATCH", f"/conversations/{cid}", {"messages": [
        {"role": "robot", "content": "x"}]})
    assert_problem(status, body, 400, "role")
    status, body = await alice.request("PATCH", f"/conversations/{cid}", {"parameters": {"temperature": 5}})
    assert_problem(status, body, 400, "temperature")
    status, body = await alice.request("GET", "/conversations/not-a-uuid")
    assert_problem(status, body, 400, "conversation_id")

    for i in range(2):
        status, _ = await alice.request("POST", "/conversations", {"title": f"chat {i}"})
        assert status == 201
    status, body = await alice.request("POST", "/conversations", {"title": "one too many"})
    assert_problem(status, body, 409, "max_per_user")
    status, body = await alice.request("GET", "/conversations?limit=2")
    assert status == 200 and body["total"] == 3 and [c["title"] for c in body["items"]] == ["chat 1", "chat 0"]
    assert "messages" not in body["items"][0]
    status, body = await alice.request("GET", "/conversations?limit=2&offset=2")
    assert [c["title"] for c in body["items"]] == ["Renamed"]

    status, _ = await alice.request("DELETE", f"/conversations/{cid}")
    assert status == 204
    status, _ = await alice.request("GET", f"/conversations/{cid}")
    assert status == 404


async def test_admins_see_others_folders_store_and_conversations(mgr: Manager) -> None:
    _, ak, sk = await create_user(mgr.app[CTX].db, "root@example.com", UserRole.SUPERADMIN,
                                  box=mgr.app[CTX].keypair_box)
    admin = APIClient(mgr.session, mgr.url, ak, sk)
    await make_folder(mgr.alice, "shared-model", {"model-definition.yaml": STORE_DEF,
                                                  "service-definition.toml": SERVICE_DEF})
    status, conv = await mgr.alice.request("POST", "/conversations", {"title": "alice's"})
    assert status == 201
    status, body = await admin.request("GET", "/folders?all=true")
    assert [(f["name"], f["user"]) for f in body] == [("shared-model", conv["owner"])]
    assert body[0]["owner_email"] == "alice@example.com"  # the console's Owner column
    status, info = await admin.request("GET", f"/folders/{body[0]['id']}")
    assert status == 200 and info["owner_email"] == "alice@example.com"
    status, body = await admin.request("GET", "/folders")
    assert body == []  # without all=true: the admin's own
    status, store = await admin.request("GET", "/model-store")
    assert [c["name"] for c in store["items"]] == ["shared-model"] and store["items"][0]["owner"] == conv["owner"]
    folder_id = store["items"][0]["folder_id"]
    status, body = await admin.request("GET", f"/folders/{folder_id}/files")
    assert status == 200 and {e["name"] for e in body["entries"]} == {"model-definition.yaml",
                                                                      "service-definition.toml"}
    status, body = await admin.request("GET", "/conversations?all=true")
    assert [(c["title"], c["owner"]) for c in body["items"]] == [("alice's", conv["owner"])]
    status, body = await admin.request("GET", "/conversations")
    assert body["items"] == []
    status, body = await admin.request("PATCH", f"/conversations/{conv['id']}", {"title": "moderated"})
    assert status == 200 and body["owner"] == conv["owner"]


async def test_a_large_file_in_many_chunks(mgr: Manager) -> None:
    await mgr.alice.request("POST", "/folders", {"name": "large"})
    data = os.urandom(64 * CHUNK + 1)  # 16 MiB and a byte: 65 chunks
    status, body = await upload(mgr.alice, "large", "model.gguf", data)
    assert status == 200 and body["complete"] and body["size"] == len(data)
    status, headers, got = await raw(mgr.alice, "GET", "/folders/large/download?path=model.gguf")
    assert status == 200 and hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


async def test_two_chunks_at_once_and_four_appends_at_once(mgr_any_db: Manager) -> None:
    mgr = mgr_any_db
    alice = mgr.alice
    await alice.request("POST", "/folders", {"name": "race"})
    status, body = await alice.request("POST", "/folders/race/uploads", {"path": "f.bin", "size": 2 * CHUNK})
    path = f"/folders/race/uploads/{body['upload_id']}?offset=0"
    release = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield b"a" * 1024
        await release.wait()
        yield b"a" * (CHUNK - 1024)

    async def slow_put() -> int:
        headers = sign_request(alice.access_key, alice.secret_key, "PUT", path, alice.host,
                               "application/octet-stream")
        async with alice.session.put(alice.base_url + path, data=slow_body(), headers=headers) as resp:
            return resp.status

    first = asyncio.create_task(slow_put())
    await asyncio.sleep(0.5)  # the first chunk holds the upload's lock now
    status, _, data = await raw(alice, "PUT", path, b"b" * CHUNK)
    assert status == 409 and b"being written" in data
    release.set()
    assert await first == 200
    status, body = await alice.request("GET", path.split("?")[0])
    assert body["offset"] == CHUNK

    status, conv = await alice.request("POST", "/conversations", {"title": "race"})
    results = await asyncio.gather(*(alice.request("PATCH", f"/conversations/{conv['id']}", {"append": [
        {"role": "user", "content": f"m{i}"}]}) for i in range(4)))
    assert [s for s, _ in results] == [200] * 4
    status, body = await alice.request("GET", f"/conversations/{conv['id']}")
    assert sorted(m["content"] for m in body["messages"]) == ["m0", "m1", "m2", "m3"]  # none lost
