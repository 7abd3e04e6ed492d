"""Where the rate-limit windows live: this process (:class:`MemoryLimiter`) or Redis, shared by every proxy
process and host (:class:`RedisLimiter`). The rules are :mod:`appproxy.gateway.limits`; in Redis they run as Lua
scripts, batched: one script call carries every admission and correction waiting in this process, so a request
costs at most one round trip on its path (docs/gateway.md, docs/performance.md).

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

    def defer_correct(self, key_id: str, request_id: str, tokens: int) -> None:
        """Correct without making the caller wait (sent with the next admission, or soon after)."""

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
        self.defer_correct(key_id, request_id, tokens)

    def defer_correct(self, key_id: str, request_id: str, tokens: int) -> None:
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


# The rules, as Lua functions shared by the scripts below (the same values as appproxy.gateway.limits.decide).
# admit(zset, hash, window ms, rpm (0: none), tpm (0: none), reserve, request id) returns {admitted 0/1,
# refused 0 none/1 requests/2 tokens, count, total, reset_requests ms, reset_tokens ms, retry ms}.
# correct(hash, request id, tokens) corrects an entry still in the window (idempotent: it sets, not adds).
RULES = """
local UNPACK = 1000
local function admit(z, h, window, rpm, tpm, reserve, id)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local expired = redis.call('ZRANGEBYSCORE', z, '-inf', now - window)
  if #expired > 0 then
    local freed = 0
    for i = 1, #expired, UNPACK do  -- in slices: unpack() of more than Lua's stack (~8000) is an error
      local part = {unpack(expired, i, math.min(i + UNPACK - 1, #expired))}
      for _, v in ipairs(redis.call('HMGET', h, unpack(part))) do freed = freed + (tonumber(v) or 0) end
      redis.call('HDEL', h, unpack(part))
    end
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
end

local function correct(h, id, new)
  local old = redis.call('HGET', h, id)
  if not old then return 0 end
  redis.call('HSET', h, id, new)
  redis.call('HINCRBY', h, '_total', new - tonumber(old))
  return 1
end
"""

# KEYS: zset, hash. ARGV: window ms, rpm, tpm, reserve, request id. One admission.
ADMIT = RULES + """
return admit(KEYS[1], KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]),
             ARGV[5])
"""

# KEYS: zset, hash. ARGV: request id, tokens. One correction.
CORRECT = RULES + """
return correct(KEYS[2], ARGV[1], tonumber(ARGV[2]))
"""

# What the gateway sends: the corrections waiting, then the admissions waiting, in one round trip.
# KEYS: each correction's hash, then each admission's zset and hash. ARGV: window ms, number of corrections,
# (request id, tokens) per correction, then (rpm, tpm, reserve, request id) per admission.
# Returns one admit() result per admission, in order.
BATCH = RULES + """
local window, nc = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 1, nc do correct(KEYS[i], ARGV[1 + 2 * i], tonumber(ARGV[2 + 2 * i])) end
local out, a, k = {}, 3 + 2 * nc, nc + 1
while a <= #ARGV do
  out[#out + 1] = admit(KEYS[k], KEYS[k + 1], window, tonumber(ARGV[a]), tonumber(ARGV[a + 1]),
                        tonumber(ARGV[a + 2]), ARGV[a + 3])
  a, k = a + 4, k + 2
end
return out
"""


class RedisLimiter:
    """Admissions and corrections in Redis, batched: at most one script call is in flight; admissions (and the
    corrections waiting) that arrive meanwhile go together in the next one, so a request costs at most one
    round trip on its path and far less than one under load. A correction is not awaited by the request: it
    rides with the next admission, or is sent on its own after ``CORRECT_DELAY``."""

    BATCH_LIMIT = 256  # admissions in one script call (the rest wait for the next one): bounds its run time
    CORRECT_DELAY = 0.05  # seconds a correction waits for an admission to carry it: how late another proxy sees it

    def __init__(self, url: str, *, prefix: str, timeout: float, fail_open: bool) -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                        retry_on_timeout=False, health_check_interval=0)
        self._correct = self._redis.register_script(CORRECT)
        self._batch = self._redis.register_script(BATCH)
        self._prefix = prefix
        self._timeout = timeout
        self._fail_open = fail_open
        self._warned_at = -WARN_EVERY
        self._admissions: list[tuple[str, Limits, int, str, asyncio.Future[list[Any]]]] = []
        self._corrections: dict[tuple[str, str], int] = {}
        self._sender: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.errors = 0
        self.round_trips = 0  # script calls sent (the benchmark and the tests compare it with the requests)

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
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._admissions.append((key_id, limits, reserve, request_id, future))
        self._send_soon()
        try:
            async with asyncio.timeout(self._timeout):
                r = await future
        except Exception as exc:  # noqa: BLE001 - connection refused, timeout, script error: all "unreachable"
            self._failed("admission", exc)
            if self._fail_open:
                return None
            raise LimiterUnavailable(str(exc)) from None
        refused = {0: None, 1: Refusal.REQUESTS, 2: Refusal.TOKENS}[int(r[1])]
        return Decision(admitted=bool(int(r[0])), refused=refused, requests=int(r[2]), tokens=int(r[3]),
                        reset_requests=int(r[4]) / 1000, reset_tokens=int(r[5]) / 1000, retry_after=int(r[6]) / 1000)

    async def correct(self, key_id: str, request_id: str, tokens: int) -> None:
        """Correct now, in a round trip of its own (see :meth:`defer_correct`)."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._correct(keys=self._keys(key_id), args=[request_id, tokens])
        except Exception as exc:  # noqa: BLE001 - the reservation stays as it was: never an error for the client
            self._failed("correction", exc)

    def defer_correct(self, key_id: str, request_id: str, tokens: int) -> None:
        """Correct with the next admission this process sends (before it, in the same script), or within
        ``CORRECT_DELAY``: the request that ended does not wait for Redis."""
        self._corrections[(key_id, request_id)] = tokens
        if len(self._corrections) >= self.BATCH_LIMIT:
            self._send_soon()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.CORRECT_DELAY, self._timer_due)

    def _timer_due(self) -> None:
        self._timer = None
        if self._corrections:
            self._send_soon()

    def _send_soon(self) -> None:
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send(), name="gateway-ratelimit-send")

    async def _send(self) -> None:
        """Send what waits, one script call at a time, until nothing does."""
        while self._admissions or self._corrections:
            batch = [a for a in self._admissions[:self.BATCH_LIMIT] if not a[4].done()]  # done: timed out
            del self._admissions[:self.BATCH_LIMIT]
            corrections, self._corrections = self._corrections, {}
            if not batch and not corrections:
                continue
            keys: list[str] = []
            args: list[int | str] = [int(WINDOW * 1000), len(corrections)]
            for (key_id, request_id), tokens in corrections.items():
                keys.append(self._prefix + key_id + ":h")
                args += [request_id, tokens]
            for key_id, limits, reserve, request_id, _ in batch:
                keys += self._keys(key_id)
                args += [limits.rpm or 0, limits.tpm or 0, reserve, request_id]
            self.round_trips += 1
            try:
                async with asyncio.timeout(self._timeout):
                    rows = await self._batch(keys=keys, args=args)
            except Exception as exc:  # noqa: BLE001 - each admission fails open/closed; corrections are lost
                if not batch:
                    self._failed("correction", exc)
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
                continue
            for (*_, future), row in zip(batch, rows, strict=True):
                if not future.done():
                    future.set_result(row)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._corrections and (self._sender is None or self._sender.done()):
            self._send_soon()  # the last corrections, within the timeout
        if self._sender is not None:
            try:
                async with asyncio.timeout(self._timeout):
                    await asyncio.shield(self._sender)
            except (TimeoutError, Exception):  # noqa: BLE001 - stopping: nothing more to do about Redis
                self._sender.cancel()
        await self._redis.aclose()
