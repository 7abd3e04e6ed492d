"""The gateway's pure parts: rate-limit decisions, reset formatting, request validation, usage reading and
stripping, what a key may reach."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence

import pytest

from appproxy.gateway.catalog import pool_of, pool_table, reachable, visible_models
from appproxy.gateway.errors import OpenAIError
from appproxy.gateway.keys import KeyCache
from appproxy.gateway.limits import WINDOW, Limits, Refusal, Window, decide, format_reset, headers
from appproxy.gateway.meter import UsageMeter
from appproxy.gateway.request import GatewayRequest, Kind, parse_request, reservation, upstream_body
from appproxy.gateway.usage import UsageTap
from common.apikeys import APIKEYS_PREFIX, ApiKeyRecord, hash_key, new_key
from common.protocol import RouteTable, RouteTarget
from common.store import MemoryStore, WatchEvent
from common.usage import UsageRecord

OWNER = uuid.uuid4()


def record(**fields: object) -> ApiKeyRecord:
    return ApiKeyRecord(key_id=uuid.uuid4(), key_hash="0" * 64, owner_id=OWNER, **fields)  # type: ignore[arg-type]


# -- limits ----------------------------------------------------------------------------------------------------
def test_rpm_admits_exactly_the_limit_in_a_sliding_window() -> None:
    window, limits = Window(), Limits(rpm=3, tpm=None)
    decisions = [window.admit(100.0 + i, limits, 1, str(i)) for i in range(5)]
    assert [d.admitted for d in decisions] == [True, True, True, False, False]
    assert decisions[3].refused is Refusal.REQUESTS and decisions[3].retry_after == pytest.approx(57.0)
    # the first entry leaves at 160: one more fits then, not before (no fixed-window burst)
    assert not window.admit(159.9, limits, 1, "a").admitted
    assert window.admit(160.0, limits, 1, "b").admitted
    assert not window.admit(160.5, limits, 1, "c").admitted


def test_tpm_reserves_and_corrections_free_tokens() -> None:
    window, limits = Window(), Limits(rpm=None, tpm=100)
    assert window.admit(0.0, limits, 60, "a").admitted
    refused = window.admit(1.0, limits, 60, "b")
    assert refused.refused is Refusal.TOKENS and refused.retry_after == pytest.approx(59.0)
    window.correct("a", 10)
    assert window.admit(2.0, limits, 60, "b").admitted
    assert not window.admit(3.0, limits, 31, "c").admitted


def test_a_request_larger_than_tpm_never_fits() -> None:
    d = decide([], 0.0, Limits(rpm=None, tpm=10), 11)
    assert not d.admitted and d.refused is Refusal.TOKENS and d.retry_after == WINDOW


def test_headers_and_reset_format() -> None:
    d = decide([(0.0, 5)], 30.0, Limits(rpm=10, tpm=100), 20)
    assert d.admitted and d.requests == 2 and d.tokens == 25
    assert headers(Limits(rpm=10, tpm=100), d) == {
        "x-ratelimit-limit-requests": "10", "x-ratelimit-remaining-requests": "8",
        "x-ratelimit-reset-requests": "30s", "x-ratelimit-limit-tokens": "100",
        "x-ratelimit-remaining-tokens": "75", "x-ratelimit-reset-tokens": "30s"}
    assert headers(Limits(rpm=None, tpm=None), d) == {}
    assert [format_reset(s) for s in (0.0, 0.25, 1.0, 59.2, 60.0, 360.0)] == [
        "0ms", "250ms", "1s", "1m0s", "1m0s", "6m0s"]


# -- request validation ----------------------------------------------------------------------------------------
def parse(body: object, kind: Kind = Kind.CHAT) -> GatewayRequest:
    return parse_request(kind, json.dumps(body).encode(), max_tokens_limit=1000, max_n=4)


def test_parse_and_reserve() -> None:
    req = parse({"model": "m", "messages": [{"role": "user", "content": "x" * 40}], "max_tokens": 10, "n": 2})
    assert req.model == "m" and req.max_tokens == 10 and req.n == 2 and not req.stream
    assert reservation(req, 500) == req.prompt_estimate + 20
    emb = parse({"model": "m", "input": "abcd"}, Kind.EMBEDDING)
    assert reservation(emb, 500) == emb.prompt_estimate
    both = parse({"model": "m", "messages": [{}], "max_tokens": 10, "max_completion_tokens": 5})
    assert both.max_tokens == 5


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": [{}]}, "model"), ({"model": None, "messages": [{}]}, "model"),
    ({"model": "m", "messages": [{}], "max_tokens": 1001}, "max_tokens"),
    ({"model": "m", "messages": [{}], "n": 5}, "n"), ({"model": "m", "messages": [{}], "n": 0}, "n"),
    ({"model": "m", "messages": [1]}, "messages"), ({"model": "m"}, "messages"),
])
def test_parse_refusals_name_the_field(body: object, param: str) -> None:
    with pytest.raises(OpenAIError) as info:
        parse(body)
    assert info.value.status == 400 and info.value.param == param


def test_deep_json_is_refused() -> None:
    with pytest.raises(OpenAIError):
        parse_request(Kind.CHAT, b"[" * 100_000 + b"]" * 100_000, max_tokens_limit=10, max_n=1)


def test_upstream_body_asks_for_usage_only_when_the_client_did_not() -> None:
    raw = json.dumps({"model": "m", "messages": [{}], "stream": True}).encode()
    req = parse_request(Kind.CHAT, raw, max_tokens_limit=10, max_n=1)
    assert json.loads(upstream_body(req, raw))["stream_options"] == {"include_usage": True}
    raw2 = json.dumps({"model": "m", "messages": [{}], "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    assert upstream_body(parse_request(Kind.CHAT, raw2, max_tokens_limit=10, max_n=1), raw2) is raw2
    raw3 = json.dumps({"model": "m", "messages": [{}]}).encode()
    assert upstream_body(parse_request(Kind.CHAT, raw3, max_tokens_limit=10, max_n=1), raw3) is raw3


# -- usage -----------------------------------------------------------------------------------------------------
def sse(payload: object) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def test_stream_usage_chunk_is_read_and_stripped_across_chunk_boundaries() -> None:
    content = sse({"choices": [{"delta": {"content": "hi"}}]})
    usage = sse({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})
    stream = content + usage + b"data: [DONE]\n\n"
    tap = UsageTap(strip_usage_chunk=True)
    out = b"".join(tap.chunk(stream[i:i + 7]) for i in range(0, len(stream), 7)) + tap.finish()
    assert out == content + b"data: [DONE]\n\n" and tap.usage == (3, 2) and tap.chunks == 1
    keep = UsageTap(strip_usage_chunk=False)
    assert b"".join(keep.chunk(stream[i:i + 5]) for i in range(0, len(stream), 5)) + keep.finish() == stream
    assert keep.usage == (3, 2)


def test_sized_usage() -> None:
    tap = UsageTap(strip_usage_chunk=False)
    tap.sized(json.dumps({"usage": {"prompt_tokens": 7, "total_tokens": 7}}).encode())
    assert tap.usage == (7, 0)
    bad = UsageTap(strip_usage_chunk=False)
    bad.sized(b'{"usage": "lots"}')
    assert bad.usage is None


# -- catalog and keys ------------------------------------------------------------------------------------------
def test_reach_and_pools() -> None:
    mine = [RouteTable(endpoint_id=uuid.uuid4(), name="a", owner_id=OWNER,
                       routes=[RouteTarget(route_id=uuid.uuid4(), host="h", port=p)]) for p in (1, 2)]
    other = RouteTable(endpoint_id=uuid.uuid4(), name="b", owner_id=uuid.uuid4())
    legacy = RouteTable(endpoint_id=uuid.uuid4(), name="c")  # published by a manager without owner_id
    tables = [*mine, other, legacy]
    assert visible_models(record(), tables) == ["a"]
    assert visible_models(record(owner_all=True), tables) == ["a", "b", "c"]
    assert visible_models(record(allowed_models=("b",)), tables) == []
    assert not reachable(record(), legacy)
    pool = pool_table("a", pool_of(record(), "a", tables))
    assert sorted(r.port for r in pool.routes) == [1, 2] and pool.name == "a"
    assert pool.endpoint_id == pool_table("a", pool_of(record(), "a", tables)).endpoint_id


async def test_key_cache_applies_events() -> None:
    cache = KeyCache(MemoryStore())
    key = new_key()
    rec = ApiKeyRecord(key_id=uuid.uuid4(), key_hash=hash_key(key), owner_id=OWNER)
    where = APIKEYS_PREFIX + rec.key_hash
    cache.apply(WatchEvent("reset", items={where: rec.model_dump_json(), APIKEYS_PREFIX + "f" * 64: "junk"}))
    assert cache.authenticate({"Authorization": f"Bearer {key}"}) == rec
    assert cache.authenticate({"X-API-Key": key}) == rec
    cache.apply(WatchEvent("put", where, "garbage"))  # an unreadable update drops the key rather than keep it
    with pytest.raises(OpenAIError):
        cache.authenticate({"X-API-Key": key})
    cache.apply(WatchEvent("put", where, rec.model_dump_json()))
    cache.apply(WatchEvent("delete", where))
    with pytest.raises(OpenAIError) as info:
        cache.authenticate({"X-API-Key": key})
    assert info.value.status == 401


# -- usage meter -----------------------------------------------------------------------------------------------
def usage_record(i: int) -> UsageRecord:
    return UsageRecord(request_id=f"{i:032x}", at=0.0, key_id=OWNER, user_id=OWNER, model="m", status=200)


async def test_meter_keeps_records_while_the_sink_fails_and_bounds_them() -> None:
    delivered: list[str] = []
    failing = True

    async def sink(records: Sequence[UsageRecord]) -> None:
        if failing:
            raise ConnectionRefusedError("manager down")
        delivered.extend(r.request_id for r in records)

    meter = UsageMeter(sink, interval=60, limit=1000, close_timeout=1)
    for i in range(1005):
        meter.add(usage_record(i))
    assert meter.dropped == 5
    assert not await meter.flush()
    failing = False
    await meter.close()
    assert delivered == [f"{i:032x}" for i in range(5, 1005)] and meter.sent == 1000


async def test_meter_without_sink_records_nothing() -> None:
    meter = UsageMeter(None, interval=1, limit=1000, close_timeout=1)
    meter.add(usage_record(1))
    meter.start()
    await meter.close()
    assert meter.sent == 0
