"""Unit/integration tests of ``moorage folder ...`` run in-process against a FAKE manager that verifies the HMAC
signature (including the multipart content type) and stores what it receives (see fake_manager.py). The real
manager is covered by end-to-end tests elsewhere."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pytest

from manager.cli.client import UploadFile, iter_multipart, multipart_length
from manager.cli.connection import CLIError
from manager.cli.folder import plan_upload
from manager.cli.main import main


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A model folder tree: a nested file, a 5 MiB file, a symlink to a file, and links to skip."""
    root = tmp_path / "src" / "mymodel"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "model-definition.yaml").write_text("models: []\n")
    (root / "sub" / "deeper" / "weights.bin").write_bytes(os.urandom(5 * 1024 * 1024 + 17))
    (root / "sub" / "notes é.txt").write_text("hello\n", encoding="utf-8")
    (root / "sub" / 'odd "name" 100%25.txt').write_text("odd\n")
    (root / "empty.txt").write_bytes(b"")
    outside = tmp_path / "outside.txt"
    outside.write_text("linked content\n")
    (root / "link.txt").symlink_to(outside)
    (root / "dangling").symlink_to(tmp_path / "nope")
    (root / "linkdir").symlink_to(root / "sub", target_is_directory=True)
    return root


def test_create(cluster, capsys):
    assert main(["folder", "create", "mymodel"]) == 0
    rec = cluster.last("POST")
    assert rec.path_qs == "/folders"
    assert rec.body == {"name": "mymodel", "usage_mode": "model"}
    folder = next(iter(cluster.folders.values()))
    out = capsys.readouterr().out
    assert folder["id"] in out and "mymodel" in out


def test_create_conflict(cluster, capsys):
    assert main(["folder", "create", "dup"]) == 0
    assert main(["folder", "create", "dup"]) == 1
    assert capsys.readouterr().err == "error: a folder named dup already exists\n"


def test_list(cluster, capsys):
    assert main(["folder", "list"]) == 0
    assert "No folders" in capsys.readouterr().out
    main(["folder", "create", "first"])
    main(["folder", "create", "second"])
    capsys.readouterr()
    assert main(["folder", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "NAME", "USAGE", "MODE"]
    assert [line.split()[1] for line in lines[1:]] == ["first", "second"]
    assert all(line.split()[2] == "model" for line in lines[1:])


def test_upload_directory_contents_arrive_intact(cluster, model_dir, capsys):
    rc = main(["folder", "upload", "mymodel", str(model_dir)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    received = cluster.uploads["mymodel"]
    assert set(received) == {"model-definition.yaml", "sub/deeper/weights.bin", "sub/notes é.txt",
                             'sub/odd "name" 100%25.txt', "empty.txt", "link.txt"}
    for dest, info in received.items():
        source = model_dir / dest
        assert info["size"] == source.stat().st_size, dest
        assert info["sha256"] == sha256(source), dest
    stored = cluster.upload_dir / "mymodel" / "sub" / "deeper" / "weights.bin"
    assert stored.read_bytes() == (model_dir / "sub" / "deeper" / "weights.bin").read_bytes()
    rec = cluster.last("POST")
    assert rec.path_qs == "/folders/mymodel/files"
    assert rec.content_type.startswith("multipart/form-data; boundary=")
    assert int(rec.headers["Content-Length"]) > 5 * 1024 * 1024
    # symlinks that are not regular files are skipped, with a warning
    assert "warning: skipping" in captured.err
    assert "dangling" in captured.err and "linkdir" in captured.err
    assert "Uploaded 6 files" in captured.out
    assert "sub/deeper/weights.bin" in captured.out


def test_upload_single_files_use_basenames(cluster, model_dir, capsys):
    rc = main(["folder", "upload", "my model", str(model_dir / "sub" / "deeper" / "weights.bin"),
               str(model_dir / "model-definition.yaml")])
    assert rc == 0, capsys.readouterr().err
    assert set(cluster.uploads["my model"]) == {"weights.bin", "model-definition.yaml"}
    assert cluster.last("POST").path_qs == "/folders/my%20model/files"


def test_upload_conflicting_destinations(cluster, tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.txt").write_text("1")
    (tmp_path / "b" / "x.txt").write_text("2")
    assert main(["folder", "upload", "m", str(tmp_path / "a"), str(tmp_path / "b" / "x.txt")]) == 1
    assert "would upload to 'x.txt'" in capsys.readouterr().err
    assert cluster.requests == []


def test_upload_missing_path_and_empty_dir(cluster, tmp_path, capsys):
    assert main(["folder", "upload", "m", str(tmp_path / "missing")]) == 1
    assert "no such file or directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["folder", "upload", "m", str(tmp_path / "empty")]) == 1
    assert capsys.readouterr().err == "error: nothing to upload\n"
    assert cluster.requests == []


def test_upload_error_from_manager(cluster, model_dir, capsys):
    from aiohttp import web

    cluster.overrides[("POST", "/folders/nope/files")] = web.Response(
        status=404, content_type="application/problem+json",
        text='{"title": "Object Not Found", "detail": "no folder named nope"}')
    assert main(["folder", "upload", "nope", str(model_dir)]) == 1
    assert capsys.readouterr().err.endswith("\nerror: no folder named nope\n")


def test_plan_upload_layout(model_dir):
    files, warnings = plan_upload([str(model_dir)])
    assert [f.dest for f in files] == ["empty.txt", "link.txt", "model-definition.yaml", "sub/notes é.txt",
                                       'sub/odd "name" 100%25.txt', "sub/deeper/weights.bin"]
    assert files[1].size == len("linked content\n")  # the symlink was followed
    assert len(warnings) == 2


def test_multipart_is_streamed_in_bounded_chunks(tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    small = tmp_path / "small.txt"
    small.write_text("x")
    files = [UploadFile(str(big), "big.bin", big.stat().st_size),
             UploadFile(str(small), 'dir/we"ird.txt', 1)]
    boundary = "b-" + uuid.uuid4().hex
    chunks = list(iter_multipart(files, boundary, chunk_size=64 * 1024))
    assert max(len(c) for c in chunks) <= 64 * 1024
    body = b"".join(chunks)
    assert len(body) == multipart_length(files, boundary)
    assert body.endswith(f"--{boundary}--\r\n".encode())
    assert b'filename="dir/we%22ird.txt"' in body


def test_file_shrinking_during_upload_is_an_error(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    files = [UploadFile(str(path), "f", 10)]
    with pytest.raises(CLIError, match="changed while"):
        list(iter_multipart(files, "b"))
