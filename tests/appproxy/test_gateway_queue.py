"""The gateway's priority queue: the pure "who goes next" rule, and a real proxy in front of a saturated echo
replica (route capacity 1, slow streamed replies) serving queued requests high → standard → low, FIFO within a
class; a client that disconnects while queued leaves the queue at once and never reaches the replica; a full
queue and a queue timeout are 503 + Retry-After in OpenAI's error shape; the queue is reported to the
autoscaler (admin JSON) and to Prometheus."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from appproxy.gateway.queue import PoolQueue, QueueOutcome, QueueRefused, Waiter, may_start, next_index, pool_capacity
from appproxy.metrics import make_registry
from appproxy.server import AppProxy
from common.apikeys import PriorityClass
from common.store import MemoryStore
from manager.control.autoscale_metrics import proxy_metric
from tests.appproxy.appproxy_testkit import eventually, publish
from tests.appproxy.test_gateway import ALICE, Echo, add_key, echoes, table  # noqa: F401 - echoes: a fixture

P = PriorityClass


def _waiter(priority: PriorityClass, seq: int) -> Waiter:
    return Waiter(priority, seq, 0.0, asyncio.Future(loop=asyncio.new_event_loop()))


def test_next_index_is_priority_then_arrival() -> None:
    waiting = [_waiter(P.LOW, 0), _waiter(P.STANDARD, 1), _waiter(P.LOW, 2), _waiter(P.HIGH, 3),
               _waiter(P.STANDARD, 4), _waiter(P.HIGH, 5)]
    order = []
    while waiting:
        index = next_index(waiting)
        assert index is not None
        order.append(waiting.pop(index).seq)
    assert order == [3, 5, 1, 4, 0, 2]
    assert next_index([]) is None


def test_may_start_and_pool_capacity() -> None:
    assert may_start(0, 1, 0) and not may_start(1, 1, 0)
    assert not may_start(0, 2, 1)  # a free slot does not let a newcomer overtake the queue
    assert may_start(3, 0, 0)  # no routes: not queued (held for a replica, or 503, as on an endpoint URL)
    assert pool_capacity([(2, 3), (1, None), (0, 50)], default=8) == 2 * 3 + 8
    assert pool_capacity([], default=8) == 0


async def test_pool_queue_hands_slots_in_order_and_forgets_the_cancelled() -> None:
    lengths: list[int] = []
    queue = PoolQueue("m", (uuid.uuid4(),), on_length=lambda q, d: lengths.append(len(q.waiting)))
    queue.set_capacity(1)
    assert await queue.acquire(P.LOW, timeout=5, max_length=10) == 0.0
    served: list[str] = []

    async def one(name: str, priority: PriorityClass) -> None:
        await queue.acquire(priority, timeout=5, max_length=10)
        served.append(name)
        await asyncio.sleep(0)
        queue.release()

    tasks = []
    for name, priority in [("l1", P.LOW), ("s1", P.STANDARD), ("gone", P.HIGH), ("h1", P.HIGH), ("s2", P.STANDARD)]:
        tasks.append(asyncio.create_task(one(name, priority)))
        await asyncio.sleep(0)
    assert len(queue.waiting) == 5
    tasks[2].cancel()  # the client left
    await asyncio.sleep(0)
    assert len(queue.waiting) == 4 and lengths[-1] == 4
    queue.release()
    await asyncio.gather(*tasks[:2], *tasks[3:])
    assert served == ["h1", "s1", "s2", "l1"]
    assert queue.idle and lengths[-1] == 0
    # bounded, and timed out
    await queue.acquire(P.LOW, timeout=5, max_length=10)  # the one slot taken
    with pytest.raises(QueueRefused) as full:
        await queue.acquire(P.HIGH, timeout=5, max_length=0)
    assert full.value.outcome is QueueOutcome.FULL
    with pytest.raises(QueueRefused) as late:
        await queue.acquire(P.HIGH, timeout=0.05, max_length=5)
    assert late.value.outcome is QueueOutcome.TIMEOUT and late.value.waited >= 0.05 and not queue.waiting
    # more capacity (a replica added) serves the waiting at once
    waiting = asyncio.create_task(queue.acquire(P.LOW, timeout=5, max_length=5))
    await asyncio.sleep(0)
    assert len(queue.waiting) == 1
    queue.set_capacity(2)
    assert await waiting >= 0 and queue.in_flight == 2 and not queue.waiting


def test_autoscaling_reads_the_queue() -> None:
    reports = [{"proxy": {"queued": 4, "queue_wait": 1.5}}, {"proxy": {"queued": 3, "queue_wait": 0.2}}]
    assert proxy_metric("queue_length", reports, 2) == 7.0
    assert proxy_metric("queue_length_per_replica", reports, 2) == 3.5
    assert proxy_metric("queue_wait", reports, 2) == 1.5
    assert proxy_metric("queue_length", [], 2) is None


# -- a real proxy in front of a saturated echo replica ----------------------------------------------------------

WORDS = " ".join(f"w{i}" for i in range(25))  # 26 chunks, 10 ms apart: each request holds the slot ~0.3 s


@pytest.fixture
def saturated(make_proxy: Callable[..., Awaitable[AppProxy]], store: MemoryStore,
              echoes: Callable[[], Echo], http: aiohttp.ClientSession  # noqa: F811 - the fixture
              ) -> Callable[..., Awaitable[dict[str, Any]]]:
    """Starts a proxy with the gateway (``[gateway]`` settings as keywords) before one echo replica, capacity 1."""
    async def start(**gateway: Any) -> dict[str, Any]:
        proxy = await make_proxy(gateway={"port": 0, **gateway})
        assert proxy.gateway is not None
        echo = echoes()
        await echo.ready(http)
        t = table("slow", ALICE, echo.target()).model_copy(update={"route_capacity": 1})
        await publish(store, t)
        await eventually(lambda: t.endpoint_id in proxy.routes.tables, what="table served")
        return {"proxy": proxy, "gateway": proxy.gateway, "url": proxy.gateway.url, "echo": echo, "table": t}

    return start


async def chat(http: aiohttp.ClientSession, state: dict[str, Any], key: str, text: str
               ) -> tuple[int, dict[str, str], bytes]:
    body = {"model": "slow", "stream": True, "messages": [{"role": "user", "content": text}]}
    async with http.post(state["url"] + "/chat/completions", json=body,
                         headers={"Authorization": f"Bearer {key}"}) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def queued(state: dict[str, Any], n: int) -> None:
    await eventually(lambda: state["proxy"].metrics.gateway_queued.get("slow", 0) == n, timeout=5,
                     what=f"{n} queued")


async def replica_served(http: aiohttp.ClientSession, echo: Echo) -> int:
    async with http.get(f"http://127.0.0.1:{echo.port}/metrics") as resp:
        return sum(int(float(line.rsplit(" ", 1)[1])) for line in (await resp.text()).splitlines()
                   if line.startswith("echo_requests_total") and 'path="/v1/chat' in line)


async def test_saturated_endpoint_serves_high_then_standard_then_low(
        saturated: Callable[..., Awaitable[dict[str, Any]]], store: MemoryStore, http: aiohttp.ClientSession) -> None:
    state = await saturated()
    keys = {p: (await add_key(store, priority=p))[0] for p in P}
    await eventually(lambda: len(state["gateway"].keys) == 3, what="keys")
    done: list[str] = []

    async def one(name: str, priority: PriorityClass) -> None:
        status, _, body = await chat(http, state, keys[priority], f"{name} {WORDS}")
        assert status == 200 and name.encode() in body and body.endswith(b"data: [DONE]\n\n"), (status, body[:300])
        done.append(name)

    blocker = asyncio.create_task(one("blocker", P.LOW))
    await eventually(lambda: state["gateway"].queues and next(iter(state["gateway"].queues.values())).in_flight == 1,
                     what="the slot taken")
    arrivals = [("low1", P.LOW), ("std1", P.STANDARD), ("high1", P.HIGH), ("low2", P.LOW), ("high2", P.HIGH),
                ("std2", P.STANDARD)]
    tasks = []
    for i, (name, priority) in enumerate(arrivals):
        tasks.append(asyncio.create_task(one(name, priority)))
        await queued(state, i + 1)  # arrival order is the order sent
    # the queue is visible to the autoscaler and Prometheus while it is there
    report = state["proxy"].scraper.report(state["table"].endpoint_id, 0)
    assert report["proxy"]["queued"] == 6 and report["proxy"]["queue_wait"] > 0
    scraped = "\n".join(f"{s.name} {s.labels} {s.value}" for m in make_registry(state["proxy"].metrics).collect()
                        for s in m.samples)
    assert "moorage_appproxy_gateway_queue_length {'model': 'slow'} 6" in scraped
    await asyncio.wait_for(asyncio.gather(blocker, *tasks), 30)
    assert done == ["blocker", "high1", "high2", "std1", "std2", "low1", "low2"]
    assert state["proxy"].metrics.gateway_queue_wait["slow"][-1] == 0  # no wait reached +Inf
    assert sum(state["proxy"].metrics.gateway_queue_wait["slow"]) == 7
    assert state["proxy"].metrics.gateway_queued.get("slow", 0) == 0


async def test_a_client_that_disconnects_while_queued_leaves_at_once(
        saturated: Callable[..., Awaitable[dict[str, Any]]], store: MemoryStore, http: aiohttp.ClientSession) -> None:
    state = await saturated()
    key, _ = await add_key(store, priority=P.HIGH)
    await eventually(lambda: len(state["gateway"].keys) == 1, what="key")
    blocker = asyncio.create_task(chat(http, state, key, "blocker " + WORDS))
    await eventually(lambda: bool(state["gateway"].queues), what="the slot taken")
    async with aiohttp.ClientSession() as leaving:
        gone = asyncio.create_task(chat(leaving, state, key, "gone"))
        await queued(state, 1)
    gone.cancel()  # its session (and connection) closed: the proxy cancels the handler
    await queued(state, 0)
    assert state["proxy"].scraper.report(state["table"].endpoint_id, 0)["proxy"]["queued"] == 0
    status, _, _ = await blocker
    assert status == 200
    await asyncio.sleep(0.2)
    queue = next(iter(state["gateway"].queues.values()))
    assert queue.in_flight == 0 and not queue.waiting
    assert await replica_served(http, state["echo"]) == 1  # the blocker only: the one that left never reached it


async def test_queue_full_and_queue_timeout_are_503_with_retry_after(
        saturated: Callable[..., Awaitable[dict[str, Any]]], store: MemoryStore, http: aiohttp.ClientSession) -> None:
    state = await saturated(queue_max_length=1, queue_timeout=0.3)
    key, _ = await add_key(store, rpm=100)
    await eventually(lambda: len(state["gateway"].keys) == 1, what="key")
    blocker = asyncio.create_task(chat(http, state, key, "blocker " + " ".join(["w"] * 100)))  # ~1 s
    await eventually(lambda: bool(state["gateway"].queues), what="the slot taken")
    waiting = asyncio.create_task(chat(http, state, key, "waits"))
    await queued(state, 1)
    status, headers, body = await chat(http, state, key, "one too many")
    assert status == 503 and headers["Retry-After"] and b'"code": "queue_full"' in body
    assert "x-ratelimit-limit-requests" in headers
    status, headers, body = await waiting
    assert status == 503 and headers["Retry-After"] and b'"code": "queue_timeout"' in body
    assert b"queue_timeout" in body and b'"type": "server_error"' in body
    assert (await blocker)[0] == 200
    refused = state["proxy"].metrics.gateway_queue_refused
    assert refused[("slow", "full")] == 1 and refused[("slow", "timeout")] == 1


async def test_more_capacity_serves_the_queue_at_once(
        saturated: Callable[..., Awaitable[dict[str, Any]]], store: MemoryStore, http: aiohttp.ClientSession) -> None:
    state = await saturated()
    key, _ = await add_key(store)
    await eventually(lambda: len(state["gateway"].keys) == 1, what="key")
    blocker = asyncio.create_task(chat(http, state, key, "blocker " + " ".join(["w"] * 150)))  # ~1.5 s
    await eventually(lambda: bool(state["gateway"].queues), what="the slot taken")
    waiting = asyncio.create_task(chat(http, state, key, "waits"))
    await queued(state, 1)
    await publish(store, state["table"].model_copy(update={"route_capacity": 2}))  # e.g. a replica's slots raised
    await queued(state, 0)
    assert (await waiting)[0] == 200 and not blocker.done()  # served while the blocker still ran
    assert (await blocker)[0] == 200
