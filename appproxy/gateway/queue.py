"""The gateway's priority queue (docs/gateway.md, Priority queue).

Each route serves at most its capacity of gateway requests at once (the service's ``route_capacity``, else
``[gateway] default_route_capacity``); a model's pool serves the sum over its routes. When the pool is full, a
request waits in the pool's bounded queue until a slot frees, ordered by the key's priority class (high, then
standard, then low) and, within a class, by arrival. A request that waits longer than ``queue_timeout`` is
answered 503 + ``Retry-After``; a full queue is answered at once the same way. A client that disconnects while
queued has its handler cancelled and leaves the queue at once.

Who goes next is the pure :func:`next_index`; :class:`PoolQueue` does the waiting. Capacities and queues are per
proxy process (like ``max_parallel``): with N proxies a pool serves up to N × capacity gateway requests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import itertools
import time
import uuid
from collections.abc import Callable, Iterable, Sequence

from common.apikeys import PriorityClass

RANK = {PriorityClass.HIGH: 0, PriorityClass.STANDARD: 1, PriorityClass.LOW: 2}  # lower goes first


class QueueOutcome(enum.StrEnum):
    FULL = "full"  # the queue already held queue_max_length requests
    TIMEOUT = "timeout"  # no slot freed within queue_timeout


class QueueRefused(Exception):
    def __init__(self, outcome: QueueOutcome, waited: float) -> None:
        super().__init__(outcome.value)
        self.outcome = outcome
        self.waited = waited


@dataclasses.dataclass(slots=True)
class Waiter:
    priority: PriorityClass
    seq: int  # arrival order
    since: float  # monotonic time it started waiting
    future: asyncio.Future[None]


def next_index(waiting: Sequence[Waiter]) -> int | None:
    """Index of the waiter served next: the highest priority class, the earliest arrival within it (pure)."""
    best: int | None = None
    best_key: tuple[int, int] | None = None
    for i, w in enumerate(waiting):
        key = (RANK[w.priority], w.seq)
        if best_key is None or key < best_key:
            best, best_key = i, key
    return best


def may_start(in_flight: int, capacity: int, queued: int) -> bool:
    """A new request starts at once only with a free slot and nobody waiting (no overtaking the queue). A pool
    without routes (capacity 0) does not queue: the request goes on to be held for a replica or answered 503 as
    on an endpoint URL."""
    return capacity == 0 or (in_flight < capacity and queued == 0)


def pool_capacity(route_counts: Iterable[tuple[int, int | None]], default: int) -> int:
    """Slots of a pool: for each member endpoint (healthy routes, its route_capacity or None), routes × capacity."""
    return sum(routes * (capacity if capacity is not None else default) for routes, capacity in route_counts)


class PoolQueue:
    """Slots and waiters of one pool (one model as one key's owner sees it) in this process."""

    def __init__(self, model: str, endpoints: tuple[uuid.UUID, ...], *,
                 on_length: Callable[[PoolQueue, int], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``on_length(queue, delta)``: called when a request joins (+1) or leaves (-1) the waiting list."""
        self.model = model
        self.endpoints = endpoints
        self._on_length = on_length
        self.capacity = 0
        self.in_flight = 0
        self.waiting: list[Waiter] = []
        self._clock = clock
        self._seq = itertools.count()

    def oldest_wait(self) -> float:
        now = self._clock()
        return max((now - w.since for w in self.waiting), default=0.0)

    def set_capacity(self, capacity: int) -> None:
        self.capacity = capacity
        self._dispatch()

    async def acquire(self, priority: PriorityClass, *, timeout: float, max_length: int) -> float:
        """Take a slot, waiting for one if needed; the seconds waited. Raises :class:`QueueRefused`."""
        if may_start(self.in_flight, self.capacity, len(self.waiting)):
            self.in_flight += 1
            return 0.0
        if len(self.waiting) >= max_length:
            raise QueueRefused(QueueOutcome.FULL, 0.0)
        waiter = Waiter(priority, next(self._seq), self._clock(), asyncio.get_running_loop().create_future())
        self.waiting.append(waiter)
        self._changed(+1)
        timer = asyncio.get_running_loop().call_later(timeout, self._expire, waiter)
        try:
            await waiter.future  # a slot (result), or QueueRefused (timeout)
        except asyncio.CancelledError:  # the client left: out of the queue at once (a slot it got goes on)
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                self.release()
            elif waiter in self.waiting:
                self.waiting.remove(waiter)
                self._changed(-1)
            raise
        finally:
            timer.cancel()
        return self._clock() - waiter.since

    def release(self) -> None:
        self.in_flight -= 1
        self._dispatch()

    def _expire(self, waiter: Waiter) -> None:
        if waiter.future.done() or waiter not in self.waiting:
            return
        self.waiting.remove(waiter)
        self._changed(-1)
        waiter.future.set_exception(QueueRefused(QueueOutcome.TIMEOUT, self._clock() - waiter.since))

    def _dispatch(self) -> None:
        while self.waiting and (self.in_flight < self.capacity or self.capacity == 0):
            index = next_index(self.waiting)
            assert index is not None
            waiter = self.waiting.pop(index)
            self._changed(-1)
            self.in_flight += 1
            waiter.future.set_result(None)

    def _changed(self, delta: int) -> None:
        if self._on_length is not None:
            self._on_length(self, delta)

    @property
    def idle(self) -> bool:
        return self.in_flight == 0 and not self.waiting


__all__ = ["RANK", "PoolQueue", "QueueOutcome", "QueueRefused", "Waiter", "may_start", "next_index",
           "pool_capacity"]
