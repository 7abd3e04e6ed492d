"""Manager leader election (manager.control.leader) against a real etcd, and the role switching and wake relay of
manager.control.duties."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from common.store import EtcdStore
from manager.config import ManagerConfig
from manager.context import ManagerContext, NoCache
from manager.control import duties
from manager.control.duties import WAKE_KEY, ManagerDuties, WakeRelay, decode_wake, encode_wake, listen_for_wakes
from manager.control.leader import (
    LEADER_KEY,
    Action,
    Candidate,
    KeyState,
    LeaderElection,
    SoleLeader,
    decide,
    key_state,
    make_election,
    parse_claim,
)
from manager.control.publisher import route_key
from tests.services import EtcdServer

TTL = 3
MARGIN = 0.75


@pytest.fixture
def namespace() -> str:
    return f"/leader-{secrets.token_hex(4)}"


async def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> float:
    """Seconds it took until ``predicate()`` was true."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


@contextlib.asynccontextmanager
async def electing(port: int, namespace: str, n: int = 2) -> AsyncIterator[list[LeaderElection]]:
    elections = [LeaderElection(lambda: EtcdStore(port=port, namespace=namespace), Candidate(f"m{i}", f"http://m{i}"),
                                TTL, MARGIN) for i in range(n)]
    tasks = [asyncio.create_task(e.run()) for e in elections]
    try:
        yield elections
    finally:
        for election in elections:
            await election.close(revoke=False)
        for task in tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


def leaders(elections: list[LeaderElection]) -> list[LeaderElection]:
    return [e for e in elections if e.is_leader]


@pytest.mark.parametrize(("is_leader", "valid_until", "key", "expected"), [
    (True, 10.0, KeyState.OURS, Action.HOLD),
    (True, 10.0, KeyState.UNKNOWN, Action.HOLD),  # the watch reconnects: keep leading until the lease says no
    (True, 4.0, KeyState.OURS, Action.STEP_DOWN),  # deadline passed: etcd may expire the lease any moment
    (True, 0.0, KeyState.OURS, Action.STEP_DOWN),  # lease lost
    (True, 10.0, KeyState.ABSENT, Action.STEP_DOWN),
    (True, 10.0, KeyState.OTHER, Action.STEP_DOWN),
    (False, 10.0, KeyState.ABSENT, Action.CAMPAIGN),
    (False, 10.0, KeyState.OURS, Action.CAMPAIGN),  # e.g. after an etcd outage our key survived
    (False, 10.0, KeyState.OTHER, Action.WAIT),
    (False, 10.0, KeyState.UNKNOWN, Action.WAIT),  # never campaign before the first view of the key
    (False, 0.0, KeyState.ABSENT, Action.WAIT),  # no live lease to bind the key to
])
def test_decide(is_leader: bool, valid_until: float, key: KeyState, expected: Action) -> None:
    action, why = decide(5.0, is_leader, valid_until, key)
    assert action == expected
    assert bool(why) == (expected == Action.STEP_DOWN)


def test_key_state_and_claims() -> None:
    me = Candidate("m1", "http://m1")
    assert key_state(None, me, 7) == KeyState.ABSENT
    assert key_state({"id": "m1", "lease": 7}, me, 7) == KeyState.OURS
    assert key_state({"id": "m1", "lease": 6}, me, 7) == KeyState.OTHER  # our old, expiring lease
    assert key_state({"id": "m2", "lease": 7}, me, 7) == KeyState.OTHER
    assert key_state({"id": "m1", "lease": 7}, me, None) == KeyState.OTHER
    assert parse_claim("not json") == {"raw": "not json"} and parse_claim(None) is None


async def test_two_managers_exactly_one_leader_and_failover_within_ttl(etcd_server: EtcdServer,
                                                                        namespace: str) -> None:
    observer = EtcdStore(port=etcd_server.client_port, namespace=namespace)
    try:
        async with electing(etcd_server.client_port, namespace) as elections:
            await wait_until(lambda: leaders(elections), 10, "a leader")
            [leader] = leaders(elections)
            follower = next(e for e in elections if e is not leader)
            claim = json.loads(await observer.get(LEADER_KEY) or "{}")
            assert claim["id"] == leader.me.id and claim["url"] == leader.me.url and claim["lease"]
            await wait_until(lambda: (follower.leader or {}).get("id") == leader.me.id, 5, "the follower's view")
            # Stable over more than a TTL: refreshes keep the lease, nobody flaps.
            for _ in range(int(TTL * 1.5 / 0.05)):
                await asyncio.sleep(0.05)
                assert leaders(elections) == [leader] and leader.term == 1 and follower.term == 0

            # The leader dies without revoking (kill -9): its lease expires and the follower takes over.
            killed_at = time.monotonic()
            await leader.close(revoke=False)
            took = await wait_until(lambda: follower.is_leader, TTL + 3, "the follower to take over")
            print(f"\nMEASURE leader election: leader dead (lease not revoked) → follower leads in {took:.2f}s "
                  f"(ttl {TTL}s)")
            assert took <= TTL + 1.0
            assert time.monotonic() - killed_at > TTL / 3  # it waited for the lease: no overlap with a live leader
            assert json.loads(await observer.get(LEADER_KEY) or "{}")["id"] == follower.me.id
    finally:
        await observer.close()


async def test_clean_stop_hands_over_at_once(etcd_server: EtcdServer, namespace: str) -> None:
    async with electing(etcd_server.client_port, namespace) as elections:
        await wait_until(lambda: leaders(elections), 10, "a leader")
        [leader] = leaders(elections)
        follower = next(e for e in elections if e is not leader)
        await leader.close()  # revokes the lease: the key vanishes now
        took = await wait_until(lambda: follower.is_leader, 2, "the follower to take over")
        assert took < 1.0


async def test_revoked_lease_makes_the_leader_step_down(etcd_server: EtcdServer, namespace: str) -> None:
    observer = EtcdStore(port=etcd_server.client_port, namespace=namespace)
    try:
        async with electing(etcd_server.client_port, namespace) as elections:
            await wait_until(lambda: leaders(elections), 10, "a leader")
            [old] = leaders(elections)
            revoked = json.loads(await observer.get(LEADER_KEY) or "{}")["lease"]
            await observer.revoke_lease(revoked)
            # The old leader stepped down (it may win again, with a new lease and a new term); exactly one leads.
            await wait_until(lambda: not old.is_leader or old.term > 1, 5, "the old leader to step down")
            await wait_until(lambda: len(leaders(elections)) == 1, 5, "a leader again")
            claim = await wait_until_claim(observer, lambda c: c["lease"] != revoked)
            [leader] = leaders(elections)
            assert claim["id"] == leader.me.id
    finally:
        await observer.close()


async def wait_until_claim(store: EtcdStore, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        raw = await store.get(LEADER_KEY)
        if raw and predicate(claim := json.loads(raw)):
            return claim
        await asyncio.sleep(0.05)
    raise AssertionError("no matching leader claim")


async def test_etcd_outage_leader_steps_down_then_one_leader_again(private_etcd: EtcdServer, namespace: str) -> None:
    async with electing(private_etcd.client_port, namespace) as elections:
        await wait_until(lambda: leaders(elections), 10, "a leader")
        private_etcd.stop()
        # Nobody can refresh: the leader stops acting before its lease could expire (ttl - margin after the last
        # refresh was sent), not only when it notices a failure.
        took = await wait_until(lambda: not leaders(elections), TTL + 1, "the leader to step down")
        assert took <= TTL - MARGIN + 0.2
        await asyncio.sleep(0.5)
        assert not leaders(elections)
        private_etcd.start()
        await wait_until(lambda: len(leaders(elections)) == 1, 20, "one leader after etcd is back")
        for _ in range(20):
            await asyncio.sleep(0.05)
            assert len(leaders(elections)) == 1


async def test_make_election_by_store() -> None:
    from common.store import MemoryStore

    me = Candidate("m", "http://m")
    sole = make_election(MemoryStore(), me, TTL, MARGIN)
    assert isinstance(sole, SoleLeader) and sole.is_leader and not sole.shared
    etcd_store = EtcdStore(port=1)
    try:
        assert isinstance(make_election(etcd_store, me, TTL, MARGIN), LeaderElection)
    finally:
        await etcd_store.close()


# -- duties: role switching and wake-ups ---------------------------------------------------------------------------
def make_ctx(store: Any, wake_interval: float = 0.2) -> ManagerContext:
    config = ManagerConfig.model_validate({"reconcile": {"interval": 0.5}, "leader": {"wake_interval": wake_interval}})
    return ManagerContext(config=config, engine=None, db=None, store=store, http=None, agents=None,  # type: ignore[arg-type]  # unused
                          cluster_secret="", jwt_secret="", keypair_box=None)  # type: ignore[arg-type]  # by the duties


def test_wake_values_roundtrip() -> None:
    ids = [uuid.uuid4(), uuid.uuid4()]
    assert decode_wake(encode_wake("m1", 3, ids)) == set(ids)
    assert decode_wake("garbage") == set() and decode_wake("[]") == set()


async def test_follower_wakeups_reach_the_leader_debounced(etcd_server: EtcdServer, namespace: str) -> None:
    leader_store = EtcdStore(port=etcd_server.client_port, namespace=namespace)
    follower_store = EtcdStore(port=etcd_server.client_port, namespace=namespace)
    leader, follower = make_ctx(leader_store), make_ctx(follower_store)
    listener = asyncio.create_task(listen_for_wakes(leader))
    relay = WakeRelay(follower)
    relay_task = asyncio.create_task(relay.run())
    try:
        await asyncio.sleep(0.5)  # the listener's first (empty) view
        leader.wake.clear()

        # One poke on the follower: the leader is woken at once and forgets its cache for that endpoint.
        first = uuid.uuid4()
        leader.published[route_key(first)] = "stale"
        poked_at = time.monotonic()
        follower.poke(first)
        took = await wait_until(lambda: first in leader.dirty_endpoints and leader.wake.is_set(), 2, "the wake")
        print(f"\nMEASURE wake relay: follower poke → leader woken in {took * 1000:.0f} ms")
        assert took < 0.5 and time.monotonic() - poked_at < 0.5
        assert route_key(first) not in leader.published

        # A burst of 50 pokes over ~0.5 s: every endpoint arrives, in a few writes only.
        writes_before = relay.writes
        burst = [uuid.uuid4() for _ in range(50)]
        for endpoint_id in burst:
            follower.poke(endpoint_id)
            await asyncio.sleep(0.01)
        await wait_until(lambda: set(burst) <= leader.dirty_endpoints, 3, "the whole burst")
        assert relay.writes - writes_before <= 5
        assert not follower.dirty_endpoints  # handed over, not kept
    finally:
        for task in (relay_task, listener):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        await leader_store.close()
        await follower_store.close()


class FakeElection:
    shared = True

    def __init__(self) -> None:
        self.is_leader = False
        self.term = 0
        self.changed = asyncio.Event()
        self.closed_with_tasks: list[str] | None = None
        self.duties: ManagerDuties | None = None

    def set(self, leader: bool) -> None:
        self.is_leader = leader
        self.term += leader
        self.changed.set()

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def close(self, revoke: bool = True) -> None:
        assert self.duties is not None
        self.closed_with_tasks = [t.get_name() for t in self.duties.tasks]


class FakeLoop:
    started: list[FakeLoop] = []

    def __init__(self, ctx: Any) -> None:
        self.cancelled = False
        FakeLoop.started.append(self)

    async def run(self) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise


async def test_duties_follow_the_election(monkeypatch: pytest.MonkeyPatch) -> None:
    from common.store import MemoryStore

    monkeypatch.setattr(duties, "ControlLoop", FakeLoop)
    FakeLoop.started = []
    ctx = make_ctx(MemoryStore())
    election = FakeElection()
    manager_duties = ManagerDuties(ctx, election)  # type: ignore[arg-type]  # a fake election
    election.duties = manager_duties
    task = asyncio.create_task(manager_duties.run())

    def names() -> list[str]:
        return sorted(t.get_name() for t in manager_duties.tasks)

    try:
        await wait_until(lambda: names() == ["wake-relay"], 2, "the follower's relay")
        assert isinstance(ctx.published, NoCache)
        ctx.published["k"] = "v"
        assert "k" not in ctx.published  # followers never trust "unchanged"

        election.set(True)
        await wait_until(lambda: names() == ["control-loop-term-1", "wake-listener"], 2, "the leader's tasks")
        assert type(ctx.published) is dict and len(FakeLoop.started) == 1

        # Lost and won again before the duties looked: a new term, so the loop restarts (never one loop for two).
        election.set(False)
        election.set(True)
        await wait_until(lambda: "control-loop-term-2" in names(), 2, "the loop of term 2")
        assert FakeLoop.started[0].cancelled and len(FakeLoop.started) == 2

        election.set(False)
        await wait_until(lambda: names() == ["wake-relay"], 2, "the follower's relay again")
        assert FakeLoop.started[1].cancelled
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
    assert election.closed_with_tasks == []  # the loops stopped before the election (and its lease) was closed


async def test_wake_key_is_namespaced(etcd_server: EtcdServer, namespace: str) -> None:
    store = EtcdStore(port=etcd_server.client_port, namespace=namespace)
    ctx = make_ctx(store)
    relay = asyncio.create_task(WakeRelay(ctx).run())
    try:
        ctx.poke()
        other = EtcdStore(port=etcd_server.client_port)
        try:
            async def written() -> bool:
                return await other.get(namespace + WAKE_KEY) is not None

            deadline = time.monotonic() + 3
            while not await written():
                assert time.monotonic() < deadline, "the wake key was not written under the namespace"
                await asyncio.sleep(0.05)
        finally:
            await other.close()
    finally:
        relay.cancel()
        with contextlib.suppress(BaseException):
            await relay
        await store.close()
