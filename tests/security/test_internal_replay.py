"""Internal calls (manager → agent RPC, agent → manager heartbeat) are refused when resent verbatim or when their
signed timestamp is outside ±60 s (common/signing.py; docs/security.md, "Service API").

A real agent app and a real manager on PostgreSQL, each on its own port; the requests carry exactly the headers
``SignedClient`` sends (``sign_headers`` with the cluster secret).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import aiohttp
import pytest

from common.signing import sign_headers
from tests.agent.conftest import SECRET, make_config, running_agent
from tests.security.api_harness import running_manager

MANAGER_SECRET = "c" * 32  # api_harness.manager_config's cluster secret


async def _send(session: aiohttp.ClientSession, method: str, url: str, path: str, body: bytes,
                headers: dict[str, str]) -> tuple[int, str]:
    async with session.request(method, url + path, data=body, headers=headers) as resp:
        text = await resp.text()
        detail = json.loads(text).get("detail", "") if text.startswith("{") else text
        return resp.status, detail


async def test_manager_to_agent_call_resent_is_refused(tmp_path: Path) -> None:
    async with running_agent(make_config(tmp_path)) as agent, aiohttp.ClientSession() as session:
        path = f"/rpc/kernels/{uuid.uuid4()}"
        headers = sign_headers(SECRET, "DELETE", path, b"")
        assert await _send(session, "DELETE", agent.url, path, b"", headers) == (200, "")
        status, detail = await _send(session, "DELETE", agent.url, path, b"", headers)
        assert status == 401 and "replayed" in detail

        body = json.dumps(agent.spec()).encode()  # a create, resent with the body it was signed over
        headers = sign_headers(SECRET, "POST", "/rpc/kernels", body)
        headers["Content-Type"] = "application/json"
        status, _ = await _send(session, "POST", agent.url, "/rpc/kernels", body, headers)
        assert status != 401
        status, detail = await _send(session, "POST", agent.url, "/rpc/kernels", body, headers)
        assert status == 401 and "replayed" in detail


@pytest.mark.parametrize("offset", [-120, 120])
async def test_manager_to_agent_call_two_minutes_off_is_refused(tmp_path: Path, offset: int) -> None:
    async with running_agent(make_config(tmp_path)) as agent, aiohttp.ClientSession() as session:
        path = f"/rpc/kernels/{uuid.uuid4()}"
        stale = sign_headers(SECRET, "DELETE", path, b"", now=time.time() + offset)
        status, detail = await _send(session, "DELETE", agent.url, path, b"", stale)
        assert status == 401 and "outside the allowed window" in detail
        fresh = sign_headers(SECRET, "DELETE", path, b"")
        assert (await _send(session, "DELETE", agent.url, path, b"", fresh))[0] == 200


async def test_agent_to_manager_heartbeat_resent_or_stale_is_refused(tmp_path: Path, pg_url: str) -> None:
    async with running_manager(tmp_path, db_url=pg_url) as m:
        body = json.dumps({"agent_id": "nope"}).encode()
        headers = sign_headers(MANAGER_SECRET, "POST", "/internal/heartbeat", body)
        status, _ = await _send(m.session, "POST", m.url, "/internal/heartbeat", body, headers)
        assert status != 401
        status, detail = await _send(m.session, "POST", m.url, "/internal/heartbeat", body, headers)
        assert status == 401 and "replayed" in detail
        for offset in (-120, 120):
            stale = sign_headers(MANAGER_SECRET, "POST", "/internal/heartbeat", body, now=time.time() + offset)
            status, detail = await _send(m.session, "POST", m.url, "/internal/heartbeat", body, stale)
            assert status == 401 and "outside the allowed window" in detail
