"""Leader election among managers that share one etcd: exactly one of them runs the control loops.

Campaign: a create-if-absent transaction on :data:`LEADER_KEY` (under the store namespace), bound to this manager's
etcd lease, which :class:`common.lease.LeaseKeeper` refreshes every ``ttl / 3``. The value names the manager
(``{"id", "url", "lease", "since"}``). Every manager watches the key; followers campaign as soon as it disappears:
a killed leader's lease expires ``ttl`` after its last refresh and etcd deletes the key with it, and a leader that
stops cleanly revokes its lease so the key vanishes at once.

The leader steps down at once (``is_leader`` false, ``changed`` set) when its lease could have expired (no refresh
sent for ``ttl - margin`` seconds, or etcd says it is gone) or when the key no longer names it, and campaigns again
when :func:`decide` says so. :func:`decide` holds all the decisions; :class:`LeaderElection` only gathers what it
needs (clock, lease, the watched key) and applies the answer. ``term`` counts the times this manager became leader,
so a consumer can tell a quick lose-and-win apart from an unbroken term.

A manager that is alone by construction (``moorage up``, in-memory store) uses :class:`SoleLeader`: always leader.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from common.aio import cancel_and_wait, wait_event
from common.lease import LeaseKeeper
from common.store import EtcdStore, KVStore

log = logging.getLogger(__name__)
LEADER_KEY = "/moorage/manager/leader"
SHUTDOWN = "shutting down"


class Action(enum.StrEnum):
    HOLD = "hold"  # leader, and rightly so
    STEP_DOWN = "step_down"
    CAMPAIGN = "campaign"
    WAIT = "wait"  # follower with nothing to do until something changes


class KeyState(enum.StrEnum):
    UNKNOWN = "unknown"  # the watch has not reported yet
    ABSENT = "absent"
    OURS = "ours"  # bound to our current lease
    OTHER = "other"


def decide(now: float, is_leader: bool, lease_valid_until: float, key: KeyState) -> tuple[Action, str]:
    """The next step and, for a step-down, why. ``lease_valid_until``: until when our lease is certainly alive in
    etcd, minus the step-down margin; 0 while we hold no lease."""
    lease_ok = now < lease_valid_until
    if is_leader:
        if not lease_ok:
            return Action.STEP_DOWN, ("the etcd lease is lost" if lease_valid_until == 0
                                      else "the etcd lease was not refreshed in time")
        if key in (KeyState.ABSENT, KeyState.OTHER):
            return Action.STEP_DOWN, "the leader key was deleted" if key == KeyState.ABSENT else \
                "the leader key names another manager"
        return Action.HOLD, ""
    if lease_ok and key in (KeyState.ABSENT, KeyState.OURS):
        return Action.CAMPAIGN, ""
    return Action.WAIT, ""


@dataclasses.dataclass(frozen=True, slots=True)
class Candidate:
    id: str  # unique per manager process
    url: str  # its API (for operators reading the key)


def encode_claim(me: Candidate, lease_id: int) -> str:
    return json.dumps({"id": me.id, "url": me.url, "lease": lease_id, "since": time.time()})


def parse_claim(raw: str | None) -> dict[str, Any] | None:
    """The leader key's value as a dict (``{"raw": ...}`` when it is not ours to read); None when absent."""
    if raw is None:
        return None
    try:
        claim = json.loads(raw)
    except ValueError:
        return {"raw": raw}
    return claim if isinstance(claim, dict) else {"raw": raw}


def key_state(claim: dict[str, Any] | None, me: Candidate, lease_id: int | None) -> KeyState:
    if claim is None:
        return KeyState.ABSENT
    if lease_id is not None and claim.get("id") == me.id and claim.get("lease") == lease_id:
        return KeyState.OURS
    return KeyState.OTHER


class LeaderElection:
    """Campaigns for :data:`LEADER_KEY` with an etcd lease; ``is_leader`` and ``term`` say where it stands and
    ``changed`` is set on every change. ``run()`` until ``close()`` (which revokes the lease: a clean stop hands
    leadership over at once)."""

    shared = True  # several managers: followers exist and wake-ups must travel through the store
    RETRY_MIN = 0.2
    RETRY_MAX = 2.0

    def __init__(self, store_factory: Callable[[], EtcdStore], me: Candidate, ttl: int, margin: float, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < margin <= ttl / 2:
            raise ValueError("margin must be in (0, ttl / 2]")
        self.me = me
        self.ttl = ttl
        self.margin = margin
        self._factory = store_factory
        self._clock = clock
        self._keeper = LeaseKeeper(store_factory, ttl, self._on_granted, on_lost=self._kick_now,
                                   name=f"leader election of {me.id}", clock=clock)
        self._store: EtcdStore | None = None
        self._kick = asyncio.Event()
        self._claim: dict[str, Any] | None = None  # the key as last seen (watch or campaign)
        self._view_ready = False
        self._task: asyncio.Task[None] | None = None
        self.is_leader = False
        self.term = 0
        self.changed = asyncio.Event()

    @property
    def leader(self) -> dict[str, Any] | None:
        """The current leader's claim as last seen (id, url, lease, since), or None."""
        return self._claim

    def _valid_until(self) -> float:
        return self._keeper.alive_until - self.margin if self._keeper.lease_id is not None else 0.0

    def _key_state(self) -> KeyState:
        return key_state(self._claim, self.me, self._keeper.lease_id) if self._view_ready else KeyState.UNKNOWN

    async def _on_granted(self, store: EtcdStore, lease_id: int) -> None:
        self._kick.set()

    def _kick_now(self) -> None:
        self._kick.set()

    def _set_leader(self, leader: bool, why: str) -> None:
        if leader == self.is_leader:
            return
        self.is_leader = leader
        if leader:
            self.term += 1
            log.info("manager %s is now the leader (term %d, lease %x, ttl %ds): starting the control loops",
                     self.me.id, self.term, self._keeper.lease_id or 0, self.ttl)
        else:
            log.log(logging.INFO if why == SHUTDOWN else logging.WARNING,
                    "manager %s steps down (%s): stopping the control loops", self.me.id, why)
        self.changed.set()

    async def run(self) -> None:
        self._task = asyncio.current_task()
        self._store = self._factory()
        keeper = asyncio.create_task(self._keeper.run(), name="leader-lease")
        watch = asyncio.create_task(self._watch(self._store), name="leader-watch")
        try:
            await self._decide_loop()
        except Exception:
            log.exception("leader election of %s failed; this manager stays a follower", self.me.id)
        finally:
            self._set_leader(False, SHUTDOWN)
            await cancel_and_wait(watch)
            await cancel_and_wait(keeper)

    async def _decide_loop(self) -> None:
        delay = self.RETRY_MIN
        while True:
            self._kick.clear()
            now = self._clock()
            action, why = decide(now, self.is_leader, self._valid_until(), self._key_state())
            if action == Action.STEP_DOWN:
                self._set_leader(False, why)
                continue
            if action == Action.CAMPAIGN:
                try:
                    await self._campaign()
                    delay = self.RETRY_MIN
                except (asyncio.CancelledError, GeneratorExit):
                    raise
                except Exception as exc:
                    log.warning("manager %s: campaign failed (%s: %s); retrying in %.1fs", self.me.id,
                                type(exc).__name__, exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.RETRY_MAX)
                continue
            # Re-decide when something changes, at the leader's deadline, and every ttl / 3 regardless.
            timeout = self.ttl / 3
            if self.is_leader:
                timeout = min(timeout, max(self._valid_until() - now, 0.0))
            await wait_event(self._kick, timeout)

    async def _campaign(self) -> None:
        lease_id = self._keeper.lease_id
        if lease_id is None or self._store is None:
            return
        created, raw, holder_lease = await self._store.put_if_absent(LEADER_KEY, encode_claim(self.me, lease_id),
                                                                     lease_id)
        claim = parse_claim(raw)
        if claim is None:
            raise RuntimeError("the leader key vanished during the campaign")
        if created or holder_lease == lease_id:
            self._claim = {**claim, "lease": lease_id}
            self._set_leader(True, "")
        else:
            self._note(claim)
            self._claim = claim

    async def _watch(self, store: EtcdStore) -> None:
        async for ev in store.watch_prefix(LEADER_KEY):
            if ev.type == "reset":
                raw = (ev.items or {}).get(LEADER_KEY)
                self._view_ready = True
            elif ev.key != LEADER_KEY:
                continue
            else:
                raw = ev.value if ev.type == "put" else None
            claim = parse_claim(raw)
            self._note(claim)
            self._claim = claim
            self._kick.set()

    def _note(self, claim: dict[str, Any] | None) -> None:
        """Log who leads when it changes (followers only: the leader logs its own changes)."""
        if claim == self._claim or self.is_leader:
            return
        if claim is None:
            log.info("manager %s: no leader (the key is gone); campaigning", self.me.id)
        elif claim.get("id") != self.me.id:
            log.info("manager %s follows leader %s at %s", self.me.id, claim.get("id"), claim.get("url"))

    async def close(self, revoke: bool = True) -> None:
        """Step down, stop, and revoke the lease (the key vanishes and another manager takes over at once)."""
        self._set_leader(False, SHUTDOWN)
        if self._task is not None and self._task is not asyncio.current_task():
            await cancel_and_wait(self._task)
        await self._keeper.close(revoke=revoke)
        store, self._store = self._store, None
        if store is not None:
            await store.close()


class SoleLeader:
    """The "election" of a manager that is alone by construction (``moorage up``): always leader, term 1."""

    shared = False

    def __init__(self, me: Candidate) -> None:
        self.me = me
        self.is_leader = True
        self.term = 1
        self.changed = asyncio.Event()  # never set
        self.leader: dict[str, Any] | None = {"id": me.id, "url": me.url}

    async def run(self) -> None:
        log.info("manager %s is the only manager (in-memory store): leader without an election", self.me.id)

    async def close(self, revoke: bool = True) -> None:
        return None


Election = LeaderElection | SoleLeader


def make_election(store: KVStore, me: Candidate, ttl: int, margin: float) -> Election:
    """An etcd store can be shared by several managers: elect. Any other store is this process's own."""
    if isinstance(store, EtcdStore):
        return LeaderElection(store.clone, me, ttl, margin)
    return SoleLeader(me)
