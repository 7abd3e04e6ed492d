"""Keypair secret keys are encrypted at rest (AES-GCM, key from ``secrets.keypair_encryption_key``).

The raw database row never holds the secret key, yet signed requests and keypair JWTs still verify; rows written
before encryption existed are sealed when a manager starts; a missing or wrong key stops the start with a clear
message instead of failing every request later. Real processes and databases (SQLite and PostgreSQL).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import jwt
import pytest
import sqlalchemy as sa

from common.store import MemoryStore
from manager.db import engine as db_engine
from manager.db.models import KeyPair, User
from manager.server import build_manager_app
from tests.e2e.harness import PYTHON, REPO, free_port_block
from tests.manager.apiclient import APIClient
from tests.manager.inprocess import manager_config, serving
from tests.services import free_port

KEY = "K" * 20 + "keypair-encryption-key-000"
OTHER_KEY = "O" * 20 + "keypair-encryption-key-111"
SECRETS = {"cluster_secret": "c" * 32, "jwt_secret": "j" * 32}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
    env.update(extra)
    return env


def _moorage(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "manager.cli.main", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, check=False)


def _exits(args: list[str], env: dict[str, str], timeout: float = 30) -> tuple[int | None, str]:
    """Run a daemon; its exit status and output, or (None, output) if it was still running after ``timeout``."""
    proc = subprocess.Popen([PYTHON, "-m", "manager.cli.main", *args], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        return None, out


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/m.db"
    else:
        yield request.getfixturevalue("pg_url")


async def _raw_secret_column(url: str) -> list[tuple[str, str]]:
    eng = db_engine.make_engine(url)
    try:
        async with eng.connect() as conn:
            return [tuple(r) for r in (await conn.execute(sa.text("SELECT access_key, secret_key FROM keypairs")))]
    finally:
        await eng.dispose()


async def _check_signed_requests(url: str, tmp_path: Path, access_key: str, secret_key: str) -> None:
    port = free_port()
    config = manager_config(tmp_path, port, db={"url": url},
                            secrets={**SECRETS, "keypair_encryption_key": KEY})
    async with serving(build_manager_app(config, MemoryStore(), run_loops=False), port), \
            aiohttp.ClientSession() as session:
        client = APIClient(session, f"http://127.0.0.1:{port}", access_key, secret_key)
        status, body = await client.request("GET", "/services")
        assert status == 200, body
        status, _ = await client.request("GET", "/services", secret_key="not-the-secret-key-" + "x" * 21)
        assert status == 401
        token = jwt.encode({"access_key": access_key, "exp": int(time.time()) + 60}, secret_key, algorithm="HS256")
        async with session.get(client.base_url + "/services", headers={"X-BackendAI-Token": token}) as resp:
            assert resp.status == 200


async def test_created_keypair_is_encrypted_at_rest_and_still_verifies(db_url: str, tmp_path: Path) -> None:
    env = _env(MOORAGE_MANAGER__SECRETS__KEYPAIR_ENCRYPTION_KEY=KEY)
    assert _moorage(env, "db", "upgrade", "--url", db_url).returncode == 0
    created = _moorage(env, "admin", "create-user", "alice@example.com", "--url", db_url)
    assert created.returncode == 0, created.stderr
    user = json.loads(created.stdout)
    secret = user["secret_key"]

    rows = dict(await _raw_secret_column(db_url))
    stored = rows[user["access_key"]]
    assert secret not in stored and stored != secret, stored
    if db_url.startswith("sqlite"):  # nor anywhere in the file, its WAL or journal
        base = db_url.split("///", 1)[1]
        for suffix in ("", "-wal", "-journal"):
            if os.path.exists(base + suffix):
                assert secret.encode() not in Path(base + suffix).read_bytes(), suffix
    assert secret not in created.stderr

    await _check_signed_requests(db_url, tmp_path, user["access_key"], secret)


async def test_plaintext_rows_from_before_are_encrypted_at_start(db_url: str, tmp_path: Path) -> None:
    await db_engine.upgrade(db_url, "0004")  # the schema before encryption, with a plaintext secret key
    access, secret, user_id = "AKIAPLAINTEXT0000001", "p" * 40, uuid.uuid4()
    secret_column = next(c for c in KeyPair.__table__.columns if c.name == "secret_key")
    eng = db_engine.make_engine(db_url)
    try:
        async with eng.begin() as conn:
            await conn.execute(sa.text("INSERT INTO domains (name, created_at) VALUES ('default', :now)"),
                               {"now": datetime.now(UTC)})
            await conn.execute(sa.insert(User.__table__).values(
                id=user_id, email="old@example.com", role="user", domain_name="default", is_active=True,
                created_at=datetime.now(UTC)))
            await conn.execute(sa.insert(KeyPair.__table__).values({
                KeyPair.__table__.c.access_key: access, secret_column: secret, KeyPair.__table__.c.user_id: user_id,
                KeyPair.__table__.c.role: "user", KeyPair.__table__.c.is_active: True,
                KeyPair.__table__.c.created_at: datetime.now(UTC)}))
    finally:
        await eng.dispose()

    await _check_signed_requests(db_url, tmp_path, access, secret)  # starts a manager (migrates to head)
    stored = dict(await _raw_secret_column(db_url))[access]
    assert secret not in stored, stored


def test_cluster_manager_without_key_refuses_to_start(tmp_path: Path) -> None:
    env = _env(MOORAGE_MANAGER__DB__URL=f"sqlite+aiosqlite:///{tmp_path}/m.db",
               MOORAGE_MANAGER__MANAGER__AUTO_MIGRATE="true",
               MOORAGE_MANAGER__MANAGER__LISTEN_PORT=str(free_port()),
               MOORAGE_MANAGER__CONSOLE__LISTEN_PORT="0",
               MOORAGE_MANAGER__MANAGER__STORAGE_ROOT=str(tmp_path / "storage"),
               MOORAGE_MANAGER__ETCD__PORT=str(free_port()),
               MOORAGE_MANAGER__SECRETS__CLUSTER_SECRET="c" * 32, MOORAGE_MANAGER__SECRETS__JWT_SECRET="j" * 32)
    status, out = _exits(["manager", "--config", str(REPO / "configs/manager.toml")], env)
    assert status == 1, out
    assert "keypair_encryption_key" in out and "Traceback" not in out, out


@pytest.fixture
def data_dir() -> Iterator[Path]:
    parent = Path(tempfile.mkdtemp(prefix="moorage-sec-", dir="/var/tmp"))
    try:
        yield parent / "data"
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def test_embedded_with_a_wrong_key_refuses_to_start(data_dir: Path) -> None:
    env = _env(MOORAGE_DATA_DIR=str(data_dir))
    port, proxy_base = free_port(), free_port_block(3)
    args = ["up", "--port", str(port),
            "--console-port", str(free_port()), "--proxy-ports", f"{proxy_base}-{proxy_base + 2}"]
    up = _moorage(env, *args, "--detach", "--wait", "60")
    assert up.returncode == 0, up.stdout + up.stderr
    down = _moorage(env, "down", "--wait", "30")
    assert down.returncode == 0, down.stdout + down.stderr
    secrets_file = data_dir / "secrets.json"
    values = json.loads(secrets_file.read_text())
    assert len(values.get("keypair_encryption_key", "")) >= 32, sorted(values)
    values["keypair_encryption_key"] = OTHER_KEY  # e.g. a database restored next to another install's secrets
    secrets_file.write_text(json.dumps(values))

    status, out = _exits(args, env)
    assert status == 1, out
    assert "keypair_encryption_key" in out and "does not decrypt" in out and "Traceback" not in out, out


def test_existing_secrets_file_gains_the_key(tmp_path: Path) -> None:
    from manager.embedded import load_or_create_secrets

    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({"cluster_secret": "c" * 43, "jwt_secret": "j" * 43}))
    values = load_or_create_secrets(tmp_path)
    assert values["cluster_secret"] == "c" * 43 and values["jwt_secret"] == "j" * 43
    assert len(values["keypair_encryption_key"]) >= 32
    assert json.loads(path.read_text()) == values
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_secrets(tmp_path) == values  # stable from then on


async def test_downgrade_decrypts_with_the_key_and_refuses_without(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/m.db"
    env = _env(MOORAGE_MANAGER__SECRETS__KEYPAIR_ENCRYPTION_KEY=KEY)
    assert _moorage(env, "db", "upgrade", "--url", url).returncode == 0
    user = json.loads(_moorage(env, "admin", "create-user", "dora@example.com", "--url", url).stdout)

    refused = _moorage(_env(), "db", "downgrade", "0004", "--url", url)
    assert refused.returncode == 1 and "keypair_encryption_key" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr, refused.stderr
    assert dict(await _raw_secret_column(url))[user["access_key"]] != user["secret_key"]

    done = _moorage(env, "db", "downgrade", "0004", "--url", url)
    assert done.returncode == 0, done.stderr
    assert dict(await _raw_secret_column(url))[user["access_key"]] == user["secret_key"]


async def test_endpoint_tokens_are_not_stored(tmp_path: Path) -> None:
    """Endpoint tokens (JWTs) are stored by id only: neither the token nor its signature is in the database file,
    its WAL, or the store (route tables carry revoked ids)."""
    from tests.manager.test_api import ECHO_DEF, _create_body, _folder_with

    port = free_port()
    store = MemoryStore()
    config = manager_config(tmp_path, port, secrets={**SECRETS, "keypair_encryption_key": KEY})
    async with serving(build_manager_app(config, store, run_loops=False), port) as app, \
            aiohttp.ClientSession() as session:
        from common.status import UserRole
        from manager.bootstrap import create_user
        from manager.context import CTX

        _, ak, sk = await create_user(app[CTX].db, "tok@example.com", UserRole.USER, box=app[CTX].keypair_box)
        client = APIClient(session, f"http://127.0.0.1:{port}", ak, sk)
        await _folder_with(client, "echo", {"model-definition.yaml": ECHO_DEF})
        status, info = await client.request("POST", "/services", _create_body("echo"))
        assert status == 201, info
        status, minted = await client.request("POST", f"/services/{info['endpoint_id']}/token", {"duration": "1h"})
        assert status == 200, minted
        token = minted["token"]
        signature = token.rsplit(".", 1)[1]
        for suffix in ("", "-wal", "-journal"):
            path = tmp_path / f"m.db{suffix}"
            if path.exists():
                raw = path.read_bytes()
                assert token.encode() not in raw and signature.encode() not in raw, suffix
        for key, value in (await store.get_prefix("")).items():
            assert signature not in value, key
