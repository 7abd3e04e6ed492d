"""What a manager runs in its current role: the leader runs the control loop and takes wake-ups from the others;
a follower relays its wake-ups to the leader.

API handlers and heartbeats call ``ctx.poke(endpoint ids)`` on whichever manager they land. On the leader that
wakes the control loop directly. On a follower :class:`WakeRelay` forwards it through the store: it writes
:data:`WAKE_KEY` (the sender, a sequence number and the endpoint ids to republish) at once, then at most once per
``leader.wake_interval`` while a burst lasts. The leader's :func:`listen_for_wakes` turns every write into a local
poke and forgets what it last published for those endpoints, since a follower may have written their route tables
in the meantime (handlers publish directly). For the same reason followers publish without the "unchanged" cache
(:class:`manager.context.NoCache`): the leader may have rewritten a table since they last wrote it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
import uuid

from common.aio import cancel_and_wait, wait_event
from manager.context import ManagerContext, NoCache
from manager.control import metrics
from manager.control.leader import Election
from manager.control.loop import ControlLoop
from manager.control.publisher import route_key

log = logging.getLogger(__name__)
WAKE_KEY = "/moorage/manager/wake"
WAKE_MAX_IDS = 1000  # endpoint ids per write (about 40 KB, far below etcd's 1.5 MiB request limit)


def encode_wake(sender: str, seq: int, endpoint_ids: list[uuid.UUID]) -> str:
    return json.dumps({"from": sender, "seq": seq, "at": time.time(), "endpoints": [str(e) for e in endpoint_ids]})


def decode_wake(raw: str) -> set[uuid.UUID]:
    """The endpoint ids in a wake value; an unreadable value still wakes the loop (empty set)."""
    try:
        ids = json.loads(raw).get("endpoints") or []
        return {uuid.UUID(str(e)) for e in ids}
    except (ValueError, AttributeError, TypeError):
        return set()


class WakeRelay:
    """On a follower: forwards ``ctx.wake`` and ``ctx.dirty_endpoints`` to the leader through :data:`WAKE_KEY`."""

    def __init__(self, ctx: ManagerContext) -> None:
        self.ctx = ctx
        self.min_interval = ctx.config.leader.wake_interval
        # Endpoints left dirty without a wake (a failed publish) are forwarded at the loop's own tick period.
        self.idle_check = ctx.config.reconcile.interval
        self._seq = itertools.count(1)
        self.writes = 0  # for tests and diagnostics

    async def run(self) -> None:
        ctx = self.ctx
        last_write = -float("inf")
        failing = False
        while True:
            await wait_event(ctx.wake, self.idle_check)
            if not ctx.wake.is_set() and not ctx.dirty_endpoints:
                continue
            pause = last_write + self.min_interval - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)  # the rest of the burst joins this write
            ctx.wake.clear()
            ids, ctx.dirty_endpoints = sorted(ctx.dirty_endpoints), set()
            last_write = time.monotonic()
            try:
                for start in range(0, max(len(ids), 1), WAKE_MAX_IDS):
                    await ctx.store.put(WAKE_KEY, encode_wake(ctx.manager_id, next(self._seq),
                                                              ids[start:start + WAKE_MAX_IDS]))
                    self.writes += 1
            except Exception as exc:
                ctx.dirty_endpoints.update(ids)  # forwarded with the next write
                if not failing:
                    log.warning("cannot forward a wake-up to the leader (%s: %s); retrying", type(exc).__name__, exc)
                failing = True
                continue
            if failing:
                log.info("wake-ups reach the leader again")
                failing = False


async def listen_for_wakes(ctx: ManagerContext) -> None:
    """On the leader: every write of :data:`WAKE_KEY` wakes the loop and gets its endpoints republished."""
    async for ev in ctx.store.watch_prefix(WAKE_KEY):
        if ev.type == "reset":  # the first one, or after a compaction: at worst one needless tick
            raw = (ev.items or {}).get(WAKE_KEY)
        elif ev.type == "put" and ev.key == WAKE_KEY:
            raw = ev.value
        else:
            continue
        if raw is None:
            continue
        ids = decode_wake(raw)
        for endpoint_id in ids:
            ctx.published.pop(route_key(endpoint_id), None)
        ctx.poke(*ids)


class ManagerDuties:
    """Starts and stops the role's tasks as the election changes (level-triggered on ``election.changed``).

    ``run()`` also runs the election; cancelling it stops the loops first and then closes the election (revoking
    the lease, so another manager takes over at once).
    """

    def __init__(self, ctx: ManagerContext, election: Election) -> None:
        self.ctx = ctx
        self.election = election
        self.tasks: list[asyncio.Task[None]] = []

    def _lead(self, term: int) -> list[asyncio.Task[None]]:
        metrics.LEADER.set(1)
        self.ctx.published = {}  # the first tick republishes every table (forced resync)
        tasks = [asyncio.create_task(ControlLoop(self.ctx).run(), name=f"control-loop-term-{term}")]
        if self.election.shared:
            tasks.append(asyncio.create_task(listen_for_wakes(self.ctx), name="wake-listener"))
        return tasks

    def _follow(self) -> list[asyncio.Task[None]]:
        metrics.LEADER.set(0)
        self.ctx.published = NoCache()
        if not self.election.shared:
            return []
        return [asyncio.create_task(WakeRelay(self.ctx).run(), name="wake-relay")]

    async def _stop(self) -> None:
        # gather, not cancel_and_wait: a cancellation of run() itself while we wait here must not be swallowed
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []

    async def run(self) -> None:
        election = self.election
        election_task = asyncio.create_task(election.run(), name="leader-election")
        term: int | None = -1  # what the running tasks are for: a term number, None (follower), -1 (nothing yet)
        try:
            while True:
                election.changed.clear()
                wanted = election.term if election.is_leader else None
                if wanted != term:
                    await self._stop()
                    self.tasks = self._lead(wanted) if wanted is not None else self._follow()
                    term = wanted
                await election.changed.wait()
        finally:
            await self._stop()
            await election.close()
            await cancel_and_wait(election_task)
