"""Prices, cost and budgets end to end: an in-process manager (SQLite), superadmin-only prices (API and CLI), each
usage record costed at the price in force when it arrived, GET /usage with cost and as CSV, and a key's monthly
budget enforced by a real gateway (429 budget_exceeded naming the budget) once the manager publishes its spend."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from common.apikeys import APIKEYS_PREFIX, ApiKeyRecord, month_of, over_budget, spent_now
from common.signing import SignedClient
from common.usage import UsageRecord
from manager.cli.main import main
from manager.prices import cost, month_start
from tests.appproxy.appproxy_testkit import eventually
from tests.manager.test_gateway_usage import CLUSTER, echo_table, env, start_proxy  # noqa: F401 - env: a fixture


def test_cost_and_months_are_pure() -> None:
    assert cost(1_000_000, 500_000, (2.0, 6.0)) == 5.0
    assert cost(10, 10, None) is None
    assert month_start(datetime(2026, 12, 3, 19, 5, tzinfo=UTC)) == datetime(2026, 12, 1, tzinfo=UTC)
    dec = datetime(2026, 12, 31, 23, 59, tzinfo=UTC).timestamp()
    assert month_of(dec) == "2026-12" and month_of(dec + 120) == "2027-01"
    record = ApiKeyRecord(key_id=uuid.uuid4(), key_hash="a" * 64, owner_id=uuid.uuid4(), budget=1.0, spent=1.5,
                          spent_month="2026-12")
    assert over_budget(record, dec) and spent_now(record, dec) == 1.5
    assert not over_budget(record, dec + 120) and spent_now(record, dec + 120) == 0.0  # a new month: a new budget
    assert not over_budget(record.model_copy(update={"budget": None}), dec)


async def _post_records(env: dict[str, Any], *records: UsageRecord) -> None:  # noqa: F811
    await SignedClient(env["session"], CLUSTER).call("POST", env["url"], "/internal/usage",
                                                     {"records": [r.model_dump(mode="json") for r in records]})


def _record(env: dict[str, Any], model: str, prompt: int, completion: int,  # noqa: F811
            key_id: uuid.UUID | None = None) -> UsageRecord:
    return UsageRecord(request_id=uuid.uuid4().hex, at=time.time(), key_id=key_id or uuid.uuid4(),
                       user_id=env["alice_id"], model=model, prompt_tokens=prompt, completion_tokens=completion,
                       status=200)


async def test_prices_are_set_by_superadmins_and_cost_records_as_they_arrive(env: dict[str, Any]) -> None:  # noqa: F811
    root, alice = env["root"], env["alice"]
    status, problem = await alice.request("PUT", "/prices/m1", {"input_per_1m": 1, "output_per_1m": 2})
    assert status == 403, problem
    for body, field in (({"input_per_1m": -1, "output_per_1m": 2}, "input_per_1m"),
                        ({"input_per_1m": 1}, "output_per_1m"), ({"input_per_1m": "x", "output_per_1m": 1},
                                                                 "input_per_1m"),
                        ({"input_per_1m": 1, "output_per_1m": 2, "extra": 1}, "extra")):
        status, problem = await root.request("PUT", "/prices/m1", body)
        assert status == 400 and field in str(problem), (body, problem)
    status, price = await root.request("PUT", "/prices/m1", {"input_per_1m": 1000, "output_per_1m": 2000})
    assert status == 200 and price["model"] == "m1" and price["input_per_1m"] == 1000
    await _post_records(env, _record(env, "m1", 5, 6), _record(env, "unpriced-model", 5, 6))
    # a later price applies to later records only
    status, _ = await root.request("PUT", "/prices/m1", {"input": 0, "output": 1_000_000})
    assert status == 200
    await _post_records(env, _record(env, "m1", 5, 1))
    status, usage = await alice.request("GET", "/usage?by=model")
    assert status == 200
    by_model = {r["model"]: r for r in usage["rows"]}
    assert by_model["m1"]["cost"] == pytest.approx((5 * 1000 + 6 * 2000) / 1e6 + 1.0)
    assert by_model["m1"]["unpriced"] == 0 and by_model["unpriced-model"] == {
        **by_model["unpriced-model"], "cost": 0.0, "unpriced": 1}
    async with env["session"].get(env["url"] + "/openapi.json") as resp:
        spec = await resp.json()
    assert {"/prices", "/prices/{model}"} <= set(spec["paths"]) and "put" in spec["paths"]["/prices/{model}"]
    status, listed = await root.request("GET", "/prices")
    assert status == 200 and [p["model"] for p in listed["prices"]] == ["m1"]
    status, listed = await alice.request("GET", "/prices")  # alice has no service named m1
    assert status == 200 and listed["prices"] == []
    status, problem = await alice.request("GET", "/usage?format=xml")
    assert status == 400 and "format" in problem["detail"]
    status, _ = await alice.request("DELETE", "/prices/m1")
    assert status == 403
    status, _ = await root.request("DELETE", "/prices/m1")
    assert status == 204
    status, _ = await root.request("DELETE", "/prices/m1")
    assert status == 404


async def test_usage_csv_and_price_cli(env: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    loop = asyncio.get_running_loop()
    conn = ["--endpoint", env["url"], "--access-key", env["root"].access_key, "--secret-key", env["root"].secret_key]
    assert await loop.run_in_executor(None, main, [*conn, "price", "set", "m1", "--input", "1000",
                                                   "--output", "2000"]) == 0
    assert "m1: input 1000, output 2000 per 1M tokens" in capsys.readouterr().out
    assert await loop.run_in_executor(None, main, [*conn, "price", "list"]) == 0
    assert "m1" in capsys.readouterr().out
    assert main([*conn, "price", "set", "m1", "--input", "-1", "--output", "1"]) == 2
    assert "--input: must be a number ≥ 0" in capsys.readouterr().err
    await _post_records(env, _record(env, "m1", 5, 6))
    status, text = await env["alice"].request("GET", "/usage?by=model&format=csv")
    assert status == 200 and text.splitlines() == [
        "model,requests,prompt_tokens,completion_tokens,total_tokens,errors,cost,unpriced", "m1,1,5,6,11,0,0.017,0"]


async def test_a_key_over_its_budget_is_refused_by_the_gateway(env: dict[str, Any]) -> None:  # noqa: F811
    status, _ = await env["root"].request("PUT", "/prices/echo", {"input_per_1m": 10_000, "output_per_1m": 10_000})
    assert status == 200  # 0.01 per token: one echo request of 3 + 4 tokens costs 0.07
    status, created = await env["alice"].request("POST", "/api-keys", {"name": "capped", "budget": 0.05})
    assert status == 201
    table = await echo_table(env, env["alice_id"])
    proxy = await start_proxy(env, usage_flush_interval=0.2)
    assert proxy.gateway is not None
    try:
        await eventually(lambda: proxy.routes.get(table.endpoint_id) is not None, what="table served")
        await eventually(lambda: len(proxy.gateway.keys) == 1, what="key")  # type: ignore[union-attr]
        headers = {"Authorization": f"Bearer {created['key']}"}
        body = {"model": "echo", "messages": [{"role": "user", "content": "a b c"}]}
        url = proxy.gateway.url + "/chat/completions"
        async with env["session"].post(url, json=body, headers=headers) as resp:
            assert resp.status == 200  # under budget (nothing spent yet)
        spent_at = time.monotonic()

        async def published() -> bool:
            records = [ApiKeyRecord.model_validate_json(v)
                       for v in (await env["store"].get_prefix(APIKEYS_PREFIX)).values()]
            return any(r.spent > 0 for r in records)

        await eventually(published, timeout=5, what="the spend published")
        async with env["session"].post(url, json=body, headers=headers) as resp:
            answer = await resp.json()
            assert resp.status == 429 and answer["error"]["code"] == "budget_exceeded", answer
            assert "budget of 0.05" in answer["error"]["message"] and int(resp.headers["Retry-After"]) >= 1
        assert time.monotonic() - spent_at < 5
        # an admin raises the budget: admitted again at once
        status, _ = await env["alice"].request("PATCH", f"/api-keys/{created['id']}", {"budget": 10})
        assert status == 200

        async def admitted() -> bool:
            async with env["session"].post(url, json=body, headers=headers) as resp:
                return resp.status == 200

        await eventually(admitted, timeout=5, what="admitted under the raised budget")
    finally:
        await proxy.stop()
