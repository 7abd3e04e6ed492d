"""Fixtures for the ``moorage`` CLI tests (unit/integration tests against a fake manager, see fake_manager.py).
The real manager is covered by end-to-end tests elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_manager import ACCESS_KEY, SECRET_KEY, FakeManager, ServerThread


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No MOORAGE_* from the developer's shell; the data dir is an empty temporary directory."""
    for name in ("MOORAGE_ENDPOINT", "MOORAGE_ACCESS_KEY", "MOORAGE_SECRET_KEY", "MOORAGE_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    data_dir = tmp_path / "moorage-data"
    data_dir.mkdir()
    monkeypatch.setenv("MOORAGE_DATA_DIR", str(data_dir))
    return data_dir


@pytest.fixture
def fake_manager(tmp_path: Path):
    manager = FakeManager(upload_dir=tmp_path / "received")
    server = ServerThread(manager.app())
    server.start()
    manager.url = f"http://127.0.0.1:{server.port}"
    try:
        yield manager
    finally:
        server.stop()


@pytest.fixture
def cluster(fake_manager: FakeManager, isolated_env: Path) -> FakeManager:
    """A ``cluster.json`` in the data dir pointing at the fake manager (what ``moorage up`` writes)."""
    (isolated_env / "cluster.json").write_text(json.dumps({
        "manager_url": fake_manager.url, "access_key": ACCESS_KEY, "secret_key": SECRET_KEY,
        "appproxy_url": "http://127.0.0.1:1", "pid": 1234,
    }))
    return fake_manager
