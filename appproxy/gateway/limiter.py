"""Where the rate-limit windows live: this process (:class:`MemoryLimiter`) or Redis, shared by every proxy
process and host (:class:`RedisLimiter`). The rules are :mod:`appproxy.gateway.limits`; in Redis they run as one
Lua script per admission (one round trip) and one per correction.

Redis layout per key (``<prefix><key id>``): a sorted set ``:z`` of request ids scored by admission time (ms),
and a hash ``:h`` of request id → reserved tokens plus ``_total``. Both expire a minute after the last write.
Times come from the Redis server (``TIME``), so the proxies' clocks play no part.

Redis unreachable or slower than ``redis_timeout``: ``fail_open`` admits the request uncounted, otherwise 503;
either way a warning (at most one every 10 s) and ``gateway_ratelimit_errors_total``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from appproxy.gateway.limits import WINDOW, Decision, Limits, Refusal, Window

log = logging.getLogger(__name__)

MAX_MEMORY_KEYS = 100_000  # windows kept in memory; idle ones are dropped first (each key has one)
WARN_EVERY = 10.0  # seconds between two "Redis unreachable" warnings


class LimiterUnavailable(Exception):
    """The shared counters cannot be reached and the gateway fails closed."""


class Limiter(Protocol):
    errors: int

    async def admit(self, key_id: str, limits: Limits, reserve: int, request_id: str) -> Decision | None:
        """The decision; None when the counters could not be reached and the gateway fails open."""

    async def correct(self, key_id: str, request_id: str, tokens: int) -> None: ...

    async def close(self) -> None: ...


class MemoryLimiter:
    def __init__(self, clock: Any = time.monotonic) -> None:
        self._windows: dict[str, Window] = {}
        self._clock = clock
        self.errors = 0

    async def admit(self, key_id: str, limits: Limits, reserve: int, request_id: str) -> Decision | None:
        window = self._windows.get(key_id)
        if window is None:
            if len(self._windows) >= MAX_MEMORY_KEYS:
                self._forget_idle()
            window = self._windows[key_id] = Window()
        return window.admit(self._clock(), limits, reserve, request_id)

    async def correct(self, key_id: str, request_id: str, tokens: int) -> None:
        window = self._windows.get(key_id)
        if window is not None:
            window.correct(request_id, tokens)

    def _forget_idle(self) -> None:
        now = self._clock()
        for key_id, window in list(self._windows.items()):
            window.expire(now)
            if not window.entries:
                del self._windows[key_id]

    async def close(self) -> None:
        self._windows.clear()


# KEYS: zset, hash. ARGV: window ms, rpm (0: none), tpm (0: none), reserve, request id.
# Returns {admitted 0/1, refused 0 none/1 requests/2 tokens, count, total, reset_requests ms, reset_tokens ms,
# retry ms}: the same values as appproxy.gateway.limits.decide.
ADMIT = """
local z, h = KEYS[1], KEYS[2]
local window, rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local reserve, id = tonumber(ARGV[4]), ARGV[5]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', z, '-inf', now - window)
if #expired > 0 then
  local gone = redis.call('HMGET', h, unpack(expired))
  local freed = 0
  for _, v in ipairs(gone) do freed = freed + (tonumber(v) or 0) end
  redis.call('HDEL', h, unpack(expired))
  redis.call('ZREMRANGEBYSCORE', z, '-inf', now - window)
  if freed > 0 then redis.call('HINCRBY', h, '_total', -freed) end
end
local count = redis.call('ZCARD', z)
local total = tonumber(redis.call('HGET', h, '_total') or '0')
local oldest = 0
if count > 0 then
  local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
  oldest = math.max(tonumber(first[2]) + window - now, 0)
end
if rpm > 0 and count + 1 > rpm then
  local at = redis.call('ZRANGE', z, count - rpm, count - rpm, 'WITHSCORES')
  return {0, 1, count, total, oldest, oldest, math.max(tonumber(at[2]) + window - now, 0)}
end
if tpm > 0 and total + reserve > tpm then
  local wait = window
  if reserve <= tpm then
    local all = redis.call('ZRANGE', z, 0, -1, 'WITHSCORES')
    local freed = 0
    for i = 1, #all, 2 do
      freed = freed + (tonumber(redis.call('HGET', h, all[i]) or '0'))
      if total - freed + reserve <= tpm then wait = tonumber(all[i + 1]) + window - now; break end
    end
  end
  wait = math.max(wait, 0)
  return {0, 2, count, total, oldest, wait, wait}
end
redis.call('ZADD', z, now, id)
redis.call('HSET', h, id, reserve)
redis.call('HINCRBY', h, '_total', reserve)
redis.call('PEXPIRE', z, window + 1000)
redis.call('PEXPIRE', h, window + 1000)
if count == 0 then oldest = window end
return {1, 0, count + 1, total + reserve, oldest, oldest, 0}
"""

# KEYS: zset, hash. ARGV: request id, tokens. Corrects an entry still in the window.
CORRECT = """
local old = redis.call('HGET', KEYS[2], ARGV[1])
if not old then return 0 end
local new = tonumber(ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], new)
redis.call('HINCRBY', KEYS[2], '_total', new - tonumber(old))
return 1
"""


class RedisLimiter:
    def __init__(self, url: str, *, prefix: str, timeout: float, fail_open: bool) -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                        retry_on_timeout=False, health_check_interval=0)
        self._admit = self._redis.register_script(ADMIT)
        self._correct = self._redis.register_script(CORRECT)
        self._prefix = prefix
        self._timeout = timeout
        self._fail_open = fail_open
        self._warned_at = -WARN_EVERY
        self.errors = 0

    def _keys(self, key_id: str) -> list[str]:
        base = self._prefix + key_id
        return [base + ":z", base + ":h"]

    def _failed(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            log.warning("rate-limit Redis unreachable during %s (%s: %s); failing %s", what, type(exc).__name__,
                        exc, "open (admitting uncounted)" if self._fail_open else "closed (503)")

    async def admit(self, key_id: str, limits: Limits, reserve: int, request_id: str) -> Decision | None:
        try:
            async with asyncio.timeout(self._timeout):
                r = await self._admit(keys=self._keys(key_id), args=[
                    int(WINDOW * 1000), limits.rpm or 0, limits.tpm or 0, reserve, request_id])
        except Exception as exc:  # noqa: BLE001 - connection refused, timeout, script error: all "unreachable"
            self._failed("admission", exc)
            if self._fail_open:
                return None
            raise LimiterUnavailable(str(exc)) from None
        refused = {0: None, 1: Refusal.REQUESTS, 2: Refusal.TOKENS}[int(r[1])]
        return Decision(admitted=bool(int(r[0])), refused=refused, requests=int(r[2]), tokens=int(r[3]),
                        reset_requests=int(r[4]) / 1000, reset_tokens=int(r[5]) / 1000, retry_after=int(r[6]) / 1000)

    async def correct(self, key_id: str, request_id: str, tokens: int) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._correct(keys=self._keys(key_id), args=[request_id, tokens])
        except Exception as exc:  # noqa: BLE001 - the reservation stays as it was: never an error for the client
            self._failed("correction", exc)

    async def close(self) -> None:
        await self._redis.aclose()
