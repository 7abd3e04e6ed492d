"""The election and control loops on their own thread (``[leader] own_thread``, with etcd): API changes still
act at once, the loops never run on the API's event loop, and stopping hands leadership over."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from common.status import UserRole
from common.store import ROUTES_PREFIX, EtcdStore
from manager.bootstrap import create_user
from manager.context import CTX
from manager.control.leader import LEADER_KEY
from manager.control.loop import ControlLoop
from manager.server import build_manager_app
from tests.manager.apiclient import APIClient
from tests.manager.inprocess import manager_config, serving
from tests.manager.test_api import ECHO_DEF, _create_body, _folder_with
from tests.services import EtcdServer, free_port


@pytest.fixture
async def threaded_manager(tmp_path: Path, etcd_server: EtcdServer,
                           monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[dict[str, Any]]:
    ticks: list[tuple[str, bool]] = []  # (thread name, whether it ran on the API's loop)
    api_loop = asyncio.get_running_loop()
    original = ControlLoop.tick

    async def recording_tick(self: ControlLoop) -> None:
        ticks.append((threading.current_thread().name, asyncio.get_running_loop() is api_loop))
        await original(self)

    monkeypatch.setattr(ControlLoop, "tick", recording_tick)
    port = free_port()
    namespace = f"/duties-{secrets.token_hex(4)}"
    store = EtcdStore(port=etcd_server.client_port, namespace=namespace)
    config = manager_config(tmp_path, port, reconcile={"interval": 30}, leader={"ttl": 2, "step_down_margin": 0.5})
    try:
        async with serving(build_manager_app(config, store), port) as app:
            _, access_key, secret_key = await create_user(app[CTX].db, "a@example.com", UserRole.USER)
            async with aiohttp.ClientSession() as session:
                yield {"alice": APIClient(session, f"http://127.0.0.1:{port}", access_key, secret_key),
                       "store": store, "ticks": ticks, "namespace": namespace}
        assert not [t for t in threading.enumerate() if t.name == "manager-duties"], "the thread outlived the app"
    finally:
        await store.close()


async def test_loops_run_on_their_own_thread_and_act_on_api_changes_at_once(threaded_manager: dict) -> None:
    alice, store, ticks = threaded_manager["alice"], threaded_manager["store"], threaded_manager["ticks"]
    await _folder_with(alice, "echo", {"model-definition.yaml": ECHO_DEF})
    started = time.monotonic()
    status, info = await alice.request("POST", "/services", {**_create_body("echo"), "replicas": 0})
    assert status == 201, info
    key = ROUTES_PREFIX + info["endpoint_id"]
    while await store.get(key) is None:  # the loop publishes it although its next periodic tick is 30 s away
        assert time.monotonic() - started < 5, "the route table was never published"
        await asyncio.sleep(0.05)
    status, _ = await alice.request("POST", f"/services/{info['endpoint_id']}/scale", {"to": 1})
    assert status == 200
    before = len(ticks)
    while len(ticks) == before:  # the scale woke the loop on the other thread
        assert time.monotonic() - started < 5, "the scale request did not wake the loop"
        await asyncio.sleep(0.05)
    assert ticks and all(name == "manager-duties" and not on_api_loop for name, on_api_loop in ticks), ticks


async def test_stopping_the_manager_hands_leadership_over(tmp_path: Path, etcd_server: EtcdServer) -> None:
    port = free_port()
    store = EtcdStore(port=etcd_server.client_port, namespace=f"/duties-{secrets.token_hex(4)}")
    config = manager_config(tmp_path, port, leader={"ttl": 5, "step_down_margin": 1})
    try:
        async with serving(build_manager_app(config, store), port):
            deadline = time.monotonic() + 5
            while await store.get(LEADER_KEY) is None:
                assert time.monotonic() < deadline, "never became leader"
                await asyncio.sleep(0.05)
        assert await store.get(LEADER_KEY) is None  # revoked at stop, not left to expire (ttl 5 s)
    finally:
        await store.close()
