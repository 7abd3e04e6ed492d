"""Hostile paths against the folder explorer (manager/api/folder_files.py): every route that takes a path refuses
``..``, absolute paths, NUL, backslashes and over-long names with a 400 naming the field, and a symlink planted in
a folder (by a replica or an operator) never lets a request read, write, list or delete outside it."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.errors import ProblemError
from manager import folder_tree
from manager.context import CTX
from manager.folders import safe_relative_path
from tests.manager.test_api_console import raw
from tests.security.api_harness import Manager, assert_problem, make_folder, running_manager

HOSTILE = ["../escape", "a/../../escape", "/etc/passwd", "a\x00b", "a\\b", "x" * 201, "./a", "a//b", ".."]


@pytest.fixture
async def mgr(tmp_path: Path) -> AsyncIterator[Manager]:
    async with running_manager(tmp_path) as m:
        await make_folder(m.alice, "box", {"model-definition.yaml": "models: []", "keep.txt": "keep"})
        yield m


def _root(m: Manager) -> Path:
    storage = Path(m.app[CTX].config.manager.storage_root)
    return next(p for p in storage.iterdir() if p.name != ".uploads")


def _q(value: str) -> str:
    return quote(value, safe="/")


@pytest.mark.parametrize("bad", HOSTILE)
async def test_hostile_paths_are_400_naming_the_field(mgr: Manager, bad: str) -> None:
    alice = mgr.alice
    for path, body, field in (("/folders/box/mkdir", {"path": bad}, "path"),
                              ("/folders/box/move-file", {"src": bad, "dst": "ok"}, "src"),
                              ("/folders/box/move-file", {"src": "keep.txt", "dst": bad}, "dst"),
                              ("/folders/box/uploads", {"path": bad, "size": 4}, "path")):
        status, problem = await alice.request("POST", path, body)
        assert_problem(status, problem, 400, field)
    for method, path in (("GET", f"/folders/box/download?path={_q(bad)}"),
                         ("DELETE", f"/folders/box/files?path={_q(bad)}"),
                         ("PUT", f"/folders/box/content?path={_q(bad)}")):
        status, _, data = await raw(alice, method, path, b"data" if method == "PUT" else None)
        assert status == 400 and b"path" in data, (method, bad, status, data)
    if bad not in ("/etc/passwd",):  # "/" alone means the root in a listing; "/etc/passwd" is still refused below
        status, _, data = await raw(alice, "GET", f"/folders/box/files?path={_q(bad)}")
        assert status == 400, (bad, data)
    assert (_root(mgr) / "keep.txt").read_text() == "keep"


async def test_absolute_listing_path_is_refused(mgr: Manager) -> None:
    status, _, data = await raw(mgr.alice, "GET", "/folders/box/files?path=/etc")
    assert status == 400 and b"absolute" in data


async def test_symlinks_never_lead_outside_the_folder(mgr: Manager, tmp_path: Path) -> None:
    alice = mgr.alice
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("top secret")
    root = _root(mgr)
    os.symlink(outside, root / "link")
    os.symlink(outside / "secret", root / "secret-link")

    status, body = await alice.request("GET", "/folders/box/files")
    assert {e["name"]: e["type"] for e in body["entries"]}["link"] == "symlink"
    status, _, data = await raw(alice, "GET", "/folders/box/files?path=link")
    assert status == 400 and b"links are not followed" in data
    status, _, data = await raw(alice, "GET", "/folders/box/files?path=link/inner")
    assert status == 400 and b"escapes the folder" in data
    for path in ("link/secret", "secret-link"):
        status, _, data = await raw(alice, "GET", f"/folders/box/download?path={path}")
        assert status == 400 and b"top secret" not in data, (path, data)
    status, body = await alice.request("POST", "/folders/box/mkdir", {"path": "link/new"})
    assert_problem(status, body, 409, "symlink")
    status, body = await alice.request("POST", "/folders/box/move-file", {"src": "keep.txt", "dst": "link/stolen"})
    assert_problem(status, body, 400, "dst", "escapes")
    status, body = await alice.request("POST", "/folders/box/move-file", {"src": "link/secret", "dst": "mine"})
    assert_problem(status, body, 400, "src", "escapes")
    status, _, data = await raw(alice, "DELETE", "/folders/box/files?path=link/secret")
    assert status == 400 and b"escapes" in data
    status, _, data = await raw(alice, "PUT", "/folders/box/content?path=link/planted", b"x")
    assert status == 400 and b"escapes" in data
    status, body = await alice.request("POST", "/folders/box/uploads", {"path": "link/planted", "size": 1})
    assert_problem(status, body, 400, "escapes")
    # writing over the link replaces the link, never the file it points to
    status, _, _ = await raw(alice, "PUT", "/folders/box/content?path=secret-link", b"replaced")
    assert status == 200 and (outside / "secret").read_text() == "top secret"
    assert not (root / "secret-link").is_symlink()
    # deleting a link removes the link only, even recursively
    status, _, _ = await raw(alice, "DELETE", "/folders/box/files?path=link&recursive=true")
    assert status == 204 and not (root / "link").exists()
    assert sorted(os.listdir(outside)) == ["secret"] and not list(outside.glob("planted"))


async def test_another_users_folder_is_a_404_everywhere(mgr: Manager) -> None:
    bob = mgr.bob
    for method, path, body in (("GET", "/folders/box/files", None), ("POST", "/folders/box/mkdir", {"path": "x"}),
                               ("POST", "/folders/box/move-file", {"src": "keep.txt", "dst": "y"}),
                               ("POST", "/folders/box/uploads", {"path": "z", "size": 1}),
                               ("POST", "/folders/box/definitions/validate", {"content": ""})):
        status, problem = await bob.request(method, path, body)
        assert_problem(status, problem, 404, "box")
    for method, path in (("GET", "/folders/box/download?path=keep.txt"), ("DELETE", "/folders/box/files?path=keep.txt"),
                         ("PUT", "/folders/box/content?path=keep.txt")):
        status, _, _ = await raw(bob, method, path, b"bob" if method == "PUT" else None)
        assert status == 404, (method, path)
    assert (_root(mgr) / "keep.txt").read_text() == "keep"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw_path=st.text(alphabet=st.sampled_from(["a", "b", ".", "/", "\\", "\x00", "é", " ", "~", "%"]),
                        max_size=12))
def test_any_path_is_a_problem_or_stays_inside(tmp_path: Path, raw_path: str) -> None:
    """Whatever the text, the explorer's operations raise a 4xx problem or act inside the folder."""
    root = tmp_path / "folder"
    root.mkdir(exist_ok=True)
    (tmp_path / "outside").mkdir(exist_ok=True)
    if not (root / "out").is_symlink():
        os.symlink(tmp_path / "outside", root / "out")
    for op in (lambda: folder_tree.make_dir(root, folder_tree.optional_path(raw_path), True),
               lambda: folder_tree.save_file(root, safe_relative_path(raw_path), b"x"),
               lambda: folder_tree.list_dir(root, folder_tree.optional_path(raw_path), 0, 10, 100),
               lambda: folder_tree.move(root, safe_relative_path(raw_path), PurePosixPath("moved"), True),
               lambda: folder_tree.delete(root, safe_relative_path(raw_path), True)):
        try:
            op()
        except ProblemError as exc:
            assert 400 <= exc.status < 500, exc
    assert os.listdir(tmp_path / "outside") == []
    assert (root / "out").is_symlink() or not (root / "out").exists()
