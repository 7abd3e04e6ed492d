"""The control loop's phases are named steps with their own error handling and metrics on /metrics."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from manager.control.loop import ControlLoop
from tests.manager.inprocess import manager_config, serving
from tests.services import free_port


def _sample(text: str, name: str, labels: str = "") -> float:
    for line in text.splitlines():
        if line.startswith(name + labels + " ") or (not labels and line.startswith(name + " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_a_failing_phase_does_not_stop_the_others_and_is_counted(tmp_path: Any,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from common.store import MemoryStore
    from manager.server import build_manager_app

    port = free_port()
    config = manager_config(tmp_path, port, reconcile={"interval": 30})
    async with serving(build_manager_app(config, MemoryStore()), port) as app, aiohttp.ClientSession() as http:
        from manager.context import CTX

        loop = ControlLoop(app[CTX])
        ran: list[str] = []

        async def broken() -> None:
            raise RuntimeError("boom")

        async def later() -> None:
            ran.append("publish")

        monkeypatch.setattr(loop, "reconcile_endpoints", broken)
        monkeypatch.setattr(loop, "publish", later)
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            before = _sample(await resp.text(), "moorage_control_phase_errors_total", '{phase="reconcile_endpoints"}')
        await loop.tick()
        assert ran == ["publish", "publish"], "the phases after the failing one still ran"
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:  # unauthenticated, like any scrape
            assert resp.status == 200
            text = await resp.text()
        assert _sample(text, "moorage_control_phase_errors_total", '{phase="reconcile_endpoints"}') == before + 1
        assert _sample(text, "moorage_control_phase_seconds_count", '{phase="schedule_pending"}') >= 1
        assert "moorage_manager_leader" in text and "moorage_control_replicas_started_total" in text
        await loop.autoscaling.close()
