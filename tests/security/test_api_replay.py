"""Replay protection of signed requests: the service API (keypair HMAC) and the internal channels."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from common.replay import ReplayCache
from common.signing import sign_headers, verify_signature
from manager.hmac_auth import sign_request
from tests.security.api_harness import Manager, assert_problem, create_body, make_folder, running_manager


async def _send(m: Manager, method: str, path: str, headers: dict[str, str], body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    async with m.session.request(method, m.url + path, data=data, headers=headers) as resp:
        raw = await resp.read()
        return resp.status, json.loads(raw) if raw else None


def _signed(m: Manager, method: str, path: str, body: bytes | None = None, now: datetime | None = None,
            content_type: str = "application/json") -> dict[str, str]:
    return sign_request(m.alice.access_key, m.alice.secret_key, method, path, f"127.0.0.1:{m.port}",
                        content_type, now=now, body=body)


@pytest.fixture
async def manager(tmp_path: Path):
    async with running_manager(tmp_path) as m:
        yield m


async def _service(m: Manager) -> str:
    await make_folder(m.alice, "echo")
    status, body = await m.alice.request("POST", "/services", create_body("echo", replicas=2))
    assert status == 201, body
    return body["endpoint_id"]


async def test_a_signature_is_accepted_once(manager: Manager) -> None:
    headers = _signed(manager, "GET", "/services", content_type="text/plain")
    status, _ = await _send(manager, "GET", "/services", headers)
    assert status == 200
    status, body = await _send(manager, "GET", "/services", headers)
    assert_problem(status, body, 401, "replayed")


async def test_captured_scale_cannot_be_resent_with_another_body(manager: Manager) -> None:
    """The probe: a captured ``scale`` resent with ``to: 0`` was a 200."""
    service_id = await _service(manager)
    path = f"/services/{service_id}/scale"
    headers = _signed(manager, "POST", path)
    status, _ = await _send(manager, "POST", path, headers, {"to": 3})
    assert status == 200
    status, body = await _send(manager, "POST", path, headers, {"to": 0})
    assert_problem(status, body, 401, "replayed")
    status, info = await manager.alice.request("GET", f"/services/{service_id}")
    assert info["replicas"] == 3


async def test_signed_body_hash_binds_the_body(manager: Manager) -> None:
    service_id = await _service(manager)
    path = f"/services/{service_id}/scale"
    good = json.dumps({"to": 1}).encode()
    status, _ = await _send(manager, "POST", path, _signed(manager, "POST", path, body=good), {"to": 1})
    assert status == 200
    # the same signature over another body: the hash no longer matches (a replay of a fresh capture)
    status, body = await _send(manager, "POST", path, _signed(manager, "POST", path, body=good), {"to": 0})
    assert_problem(status, body, 400, "X-Moorage-Content-SHA256")
    # the header swapped for the new body's hash: the signature no longer matches
    headers = _signed(manager, "POST", path, body=good)
    headers["X-Moorage-Content-SHA256"] = hashlib.sha256(json.dumps({"to": 0}).encode()).hexdigest()
    status, body = await _send(manager, "POST", path, headers, {"to": 0})
    assert_problem(status, body, 401, "signature mismatch")
    # the header stripped: the signature covered it, so it no longer matches either
    headers = _signed(manager, "POST", path, body=good)
    del headers["X-Moorage-Content-SHA256"]
    status, body = await _send(manager, "POST", path, headers, {"to": 0})
    assert_problem(status, body, 401, "signature mismatch")
    headers = _signed(manager, "POST", path, body=good)
    headers["X-Moorage-Content-SHA256"] = "zz"
    status, body = await _send(manager, "POST", path, headers, {"to": 1})
    assert_problem(status, body, 401, "64 hex digits")
    status, info = await manager.alice.request("GET", f"/services/{service_id}")
    assert info["replicas"] == 1


async def test_requests_without_the_hash_still_work(manager: Manager) -> None:
    """What the official backend.ai client sends: no body hash, each request signed afresh."""
    service_id = await _service(manager)
    for to in (2, 0, 1):
        status, body = await manager.alice.request("POST", f"/services/{service_id}/scale", {"to": to})
        assert status == 200, body


async def test_clock_skew_defaults_to_five_minutes(manager: Manager) -> None:
    now = datetime.now(UTC)
    status, _ = await manager.alice.request("GET", "/services", now=now - timedelta(minutes=4))
    assert status == 200
    status, body = await manager.alice.request("GET", "/services", now=now - timedelta(minutes=6))
    assert_problem(status, body, 401, "auth.clock_skew")
    status, body = await manager.alice.request("GET", "/services", now=now + timedelta(minutes=6))
    assert_problem(status, body, 401, "auth.clock_skew")


async def test_clock_skew_is_configurable(tmp_path: Path) -> None:
    async with running_manager(tmp_path, auth={"clock_skew": 30}) as m:
        status, body = await m.alice.request("GET", "/services", now=datetime.now(UTC) - timedelta(seconds=60))
        assert_problem(status, body, 401, "30 seconds")
        status, _ = await m.alice.request("GET", "/services", now=datetime.now(UTC) - timedelta(seconds=10))
        assert status == 200


def test_replay_cache_forgets_expired_entries_and_stays_bounded() -> None:
    cache = ReplayCache(max_entries=3)
    assert cache.claim(("ak", "s1"), expires_at=10, now=0)
    assert not cache.claim(("ak", "s1"), expires_at=10, now=5)
    assert cache.claim(("ak", "s1"), expires_at=20, now=10)  # expired, so a new entry
    for i in range(10):
        assert cache.claim(("ak", f"x{i}"), expires_at=30 + i, now=11)
        assert len(cache) <= 3
    assert not cache.claim(("ak", "x9"), expires_at=50, now=12)


def test_internal_signatures_are_accepted_once() -> None:
    secret = "s" * 32
    cache = ReplayCache(100)
    headers = sign_headers(secret, "POST", "/internal/heartbeat", b"{}")
    verify_signature(secret, "POST", "/internal/heartbeat", b"{}", headers, replay=cache)
    with pytest.raises(Exception, match="replayed"):
        verify_signature(secret, "POST", "/internal/heartbeat", b"{}", headers, replay=cache)
    again = sign_headers(secret, "POST", "/internal/heartbeat", b"{}")  # same second, new timestamp
    verify_signature(secret, "POST", "/internal/heartbeat", b"{}", again, replay=cache)


async def test_internal_heartbeat_replay_is_refused(manager: Manager) -> None:
    body = json.dumps({"agent_id": "nope"}).encode()
    headers = sign_headers("c" * 32, "POST", "/internal/heartbeat", body, now=time.time())
    async with manager.session.post(manager.url + "/internal/heartbeat", data=body, headers=headers) as resp:
        assert resp.status != 401
    async with manager.session.post(manager.url + "/internal/heartbeat", data=body, headers=headers) as resp:
        assert resp.status == 401 and "replayed" in (await resp.json())["detail"]
