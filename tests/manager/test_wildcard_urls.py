"""Wildcard-subdomain URLs: each endpoint gets a DNS label from its name, unique among live endpoints."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from common.status import UserRole
from common.store import ROUTES_PREFIX, MemoryStore
from manager.bootstrap import create_user
from manager.context import CTX
from manager.endpoints import subdomain_base
from manager.server import build_manager_app
from tests.manager.apiclient import APIClient
from tests.manager.inprocess import manager_config, serving
from tests.manager.test_api import ECHO_DEF, _create_body, _folder_with
from tests.services import free_port


def test_subdomain_base() -> None:
    assert subdomain_base("My_Service-1") == "my-service-1"
    assert subdomain_base("__") == "svc"
    assert len(subdomain_base("x" * 100)) == 40


async def test_two_users_same_name_get_distinct_stable_subdomains(tmp_path: Path) -> None:
    port = free_port()
    config = manager_config(tmp_path, port, appproxy={
        "frontend": "wildcard", "wildcard_domain": ".apps.example.test", "wildcard_port": 8443, "scheme": "https"})
    store = MemoryStore()
    async with serving(build_manager_app(config, store), port) as app:
        urls = []
        async with aiohttp.ClientSession() as session:
            for email in ("a@x.test", "b@x.test"):
                _, ak, sk = await create_user(app[CTX].db, email, UserRole.USER, box=app[CTX].keypair_box)
                client = APIClient(session, f"http://127.0.0.1:{port}", ak, sk)
                await _folder_with(client, "echo", {"model-definition.yaml": ECHO_DEF})
                status, info = await client.request("POST", "/services", _create_body("echo", name="Chat_Bot"))
                assert status == 201, info
                urls.append(info["service_endpoint"])
                status, again = await client.request("GET", f"/services/{info['endpoint_id']}")
                assert again["service_endpoint"] == info["service_endpoint"]
                await client.request("POST", f"/services/{info['endpoint_id']}/sync")
                table = json.loads(await store.get(ROUTES_PREFIX + info["endpoint_id"]))
                assert table["port"] is None and info["service_endpoint"].startswith(f"https://{table['subdomain']}.")
        assert urls[0] == "https://chat-bot.apps.example.test:8443"
        assert urls[1].startswith("https://chat-bot-") and urls[1] != urls[0]
