"""Unit/integration tests of how the ``moorage`` CLI finds the manager (cluster.json < env < flags) and signs
requests, run in-process against a FAKE manager that verifies the HMAC signature (see fake_manager.py). The real
manager is covered by end-to-end tests elsewhere."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from fake_manager import ACCESS_KEY, OTHER_KEYS, SECRET_KEY

from manager.cli.client import Client
from manager.cli.connection import CLIError, Connection, resolve_connection
from manager.cli.main import main


def write_cluster(data_dir: Path, **values) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "cluster.json").write_text(json.dumps(values))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- resolve_connection (unit) --------------------------------------------------------------------------------


def test_cluster_file_is_the_base(tmp_path):
    write_cluster(tmp_path, manager_url="http://127.0.0.1:8081/", access_key="AK", secret_key="SK", other=1)
    conn = resolve_connection(env={"MOORAGE_DATA_DIR": str(tmp_path)})
    assert conn == Connection("http://127.0.0.1:8081", "AK", "SK")


def test_env_overrides_file_and_flags_override_env(tmp_path):
    write_cluster(tmp_path, manager_url="http://file:1", access_key="AK-file", secret_key="SK-file")
    env = {"MOORAGE_DATA_DIR": str(tmp_path), "MOORAGE_ENDPOINT": "http://env:2", "MOORAGE_ACCESS_KEY": "AK-env"}
    assert resolve_connection(env=env) == Connection("http://env:2", "AK-env", "SK-file")
    assert resolve_connection(env=env, endpoint="https://flag:3", secret_key="SK-flag") == \
        Connection("https://flag:3", "AK-env", "SK-flag")


def test_data_dir_flag_beats_env(tmp_path):
    write_cluster(tmp_path / "a", manager_url="http://a:1", access_key="A", secret_key="A")
    write_cluster(tmp_path / "b", manager_url="http://b:1", access_key="B", secret_key="B")
    env = {"MOORAGE_DATA_DIR": str(tmp_path / "a")}
    assert resolve_connection(env=env).access_key == "A"
    assert resolve_connection(env=env, data_dir=str(tmp_path / "b")).access_key == "B"


def test_env_alone_needs_no_cluster_file(tmp_path):
    (tmp_path / "cluster.json").write_text("{broken")  # never read when env gives everything
    env = {"MOORAGE_DATA_DIR": str(tmp_path), "MOORAGE_ENDPOINT": "http://h:1", "MOORAGE_ACCESS_KEY": "A",
           "MOORAGE_SECRET_KEY": "S"}
    assert resolve_connection(env=env) == Connection("http://h:1", "A", "S")


def test_default_data_dir_is_platformdirs(monkeypatch):
    import platformdirs

    from manager.cli.connection import resolve_data_dir

    assert resolve_data_dir(None, {}) == Path(platformdirs.user_data_dir("moorage"))


@pytest.mark.parametrize("content, message", [
    ("{broken", "not valid JSON"),
    ("[1, 2]", "must hold a JSON object"),
])
def test_bad_cluster_file(tmp_path, content, message):
    (tmp_path / "cluster.json").write_text(content)
    with pytest.raises(CLIError, match=message):
        resolve_connection(env={"MOORAGE_DATA_DIR": str(tmp_path)})


def test_bad_endpoint(tmp_path):
    with pytest.raises(CLIError, match="invalid manager endpoint"):
        resolve_connection(env={"MOORAGE_DATA_DIR": str(tmp_path)}, endpoint="ftp://x", access_key="a",
                           secret_key="b")


def test_secret_not_in_repr():
    assert "hunter2" not in repr(Connection("http://h", "AK", "hunter2"))


# -- through the CLI, against the fake manager ------------------------------------------------------------------


def test_missing_config_tells_user_what_to_do(capsys, isolated_env):
    assert main(["service", "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no manager connection configured")
    assert "moorage up" in err and "MOORAGE_ENDPOINT" in err and "MOORAGE_SECRET_KEY" in err
    assert str(isolated_env / "cluster.json") in err
    assert "Traceback" not in err


def test_precedence_end_to_end(fake_manager, isolated_env, monkeypatch, capsys):
    # cluster.json: a dead endpoint and the file keypair
    write_cluster(isolated_env, manager_url=f"http://127.0.0.1:{free_port()}", access_key="AKFILEKEY",
                  secret_key=OTHER_KEYS["AKFILEKEY"])
    assert main(["service", "list"]) == 1
    assert "cannot connect" in capsys.readouterr().err

    # env fixes the endpoint; the keypair still comes from the file
    monkeypatch.setenv("MOORAGE_ENDPOINT", fake_manager.url)
    assert main(["service", "list"]) == 0
    assert fake_manager.last().access_key == "AKFILEKEY"

    # env keypair beats the file's
    monkeypatch.setenv("MOORAGE_ACCESS_KEY", "AKENVKEY")
    monkeypatch.setenv("MOORAGE_SECRET_KEY", OTHER_KEYS["AKENVKEY"])
    assert main(["service", "list"]) == 0
    assert fake_manager.last().access_key == "AKENVKEY"

    # flags beat env, before or after the command
    flags = ["--access-key", "AKFLAGKEY", "--secret-key", OTHER_KEYS["AKFLAGKEY"]]
    assert main([*flags, "service", "list"]) == 0
    assert fake_manager.last().access_key == "AKFLAGKEY"
    monkeypatch.setenv("MOORAGE_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    assert main(["service", "list", "--endpoint", fake_manager.url, *flags]) == 0
    assert fake_manager.last().access_key == "AKFLAGKEY"
    # a flag given before the command is not erased by the (absent) same flag after it
    assert main(["--endpoint", fake_manager.url, "service", "list"]) == 0
    assert len(fake_manager.requests) == 5


def test_wrong_secret_is_rejected_by_the_verifier(fake_manager, capsys):
    rc = main(["--endpoint", fake_manager.url, "--access-key", ACCESS_KEY, "--secret-key", "wrong",
               "service", "list"])
    assert rc == 1
    assert capsys.readouterr().err == "error: signature mismatch\n"
    assert fake_manager.requests == []


def test_localhost_endpoint_signs_the_host_as_written(fake_manager, capsys):
    port = fake_manager.url.rsplit(":", 1)[1]
    for url in (f"http://localhost:{port}", f"http://127.0.0.1:{port}/"):
        assert main(["--endpoint", url, "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY,
                     "service", "list"]) == 0, capsys.readouterr().err
    hosts = [r.headers["Host"] for r in fake_manager.requests]
    assert hosts == [f"localhost:{port}", f"127.0.0.1:{port}"]


def test_signed_headers_follow_backendai(cluster):
    Client(resolve_connection()).get("/services", params={"name": "a b"})
    rec = cluster.last()
    assert rec.path_qs == "/services?name=a%20b"
    assert rec.headers["X-BackendAI-Version"] == "v9.20250722"
    assert rec.headers["Authorization"].startswith(f"BackendAI signMethod=HMAC-SHA256, credential={ACCESS_KEY}:")
    assert rec.content_type == "text/plain"
    assert "Date" in rec.headers


def test_connection_refused(capsys):
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["--endpoint", url, "--access-key", "a", "--secret-key", "b", "folder", "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot connect to the manager at {url}")
    assert "Traceback" not in err
