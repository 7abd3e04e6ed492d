"""Scheduler strategies and predicates (pure): spread, dispersed, concentrated, roundrobin, GPU device fit."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.slots import ResourceSlots
from manager.control.scheduler import (
    STRATEGIES,
    AgentCapacity,
    normalize_architecture,
    place_shares,
    select_agent,
)


def _agent(agent_id: str, cpu: str = "4", used: str = "0", replicas: int = 0, arch: str = "x86_64",
           devices: dict[str, str] | None = None) -> AgentCapacity:
    gpus = {"cuda.shares": str(len(devices))} if devices else {}
    return AgentCapacity(agent_id, "default", arch, ResourceSlots.parse({"cpu": cpu, "mem": "8g", **gpus}),
                         ResourceSlots.parse({"cpu": used}), replicas,
                         {k: Decimal(v) for k, v in devices.items()} if devices is not None else None)


REQ = ResourceSlots.parse({"cpu": "1", "mem": "1g"})


def test_dispersed_picks_the_emptiest_and_concentrated_the_fullest_agent() -> None:
    agents = [_agent("a", used="3"), _agent("b", used="1"), _agent("c", used="2")]
    assert select_agent(REQ, agents, "default", strategy="dispersed").agent_id == "b"
    assert select_agent(REQ, agents, "default", strategy="concentrated").agent_id == "a"


def test_every_strategy_spreads_one_endpoints_replicas_first() -> None:
    agents = [_agent("a", used="3", replicas=1), _agent("b", used="1", replicas=1), _agent("c", used="2")]
    for strategy in STRATEGIES:
        assert select_agent(REQ, agents, "default", strategy=strategy).agent_id == "c", strategy


def test_roundrobin_cycles_through_the_fitting_agents_in_id_order() -> None:
    agents = [_agent("a"), _agent("b"), _agent("c", used="3.5")]  # c cannot fit a 1-cpu replica
    picks, last = [], None
    for _ in range(4):
        last = select_agent(REQ, agents, "default", strategy="roundrobin", last_agent_id=last).agent_id
        picks.append(last)
    assert picks == ["a", "b", "a", "b"]


def test_architecture_predicate_names_the_architecture() -> None:
    placement = select_agent(REQ, [_agent("a", arch="aarch64")], "default", architecture="x86_64")
    assert placement.agent_id is None and "architecture 'x86_64'" in placement.reason
    assert normalize_architecture("amd64") == "x86_64" and normalize_architecture("ARM64") == "aarch64"


def test_fractional_shares_need_room_on_one_device() -> None:
    fragmented = _agent("a", devices={"GPU-0": "0.5", "GPU-1": "0.5"})  # 1.0 free in total, 0.5 per device
    req = ResourceSlots.parse({"cpu": "1", "cuda.shares": "0.6"})
    placement = select_agent(req, [fragmented], "default")
    assert placement.agent_id is None
    assert "0.6 cuda.shares free on one GPU" in placement.reason and "fragmented" in placement.reason
    roomy = _agent("b", devices={"GPU-0": "0.2", "GPU-1": "1"})
    assert select_agent(req, [fragmented, roomy], "default").agent_id == "b"


def test_whole_devices_must_be_wholly_free() -> None:
    req = ResourceSlots.parse({"cpu": "1", "cuda.device": "1"})
    agent = AgentCapacity("a", "default", "x86_64", ResourceSlots.parse({"cpu": "4", "cuda.device": "2"}),
                          ResourceSlots(), 0, {"GPU-0": Decimal("0.9"), "GPU-1": Decimal("0.5")})
    assert "wholly free cuda.device" in select_agent(req, [agent], "default").reason


def test_place_shares_is_best_fit_and_whole_first() -> None:
    free = {"GPU-0": Decimal(1), "GPU-1": Decimal("0.3"), "GPU-2": Decimal("0.6")}
    assert place_shares(free, Decimal("0.25")) == {"GPU-1": Decimal("0.25")}  # the fullest device that fits
    assert place_shares(free, Decimal("1.5")) == {"GPU-0": Decimal(1), "GPU-2": Decimal("0.5")}
    assert place_shares(free, Decimal("2")) is None


@pytest.mark.parametrize("strategy", STRATEGIES)
@settings(max_examples=60, deadline=None)
@given(cpus=st.lists(st.sampled_from(["1", "2", "4"]), min_size=1, max_size=5),
       requests=st.lists(st.sampled_from(["0.5", "1", "2"]), min_size=1, max_size=20))
def test_no_strategy_ever_overcommits(strategy: str, cpus: list[str], requests: list[str]) -> None:
    agents = {f"a{i}": _agent(f"a{i}", cpu=c) for i, c in enumerate(cpus)}
    last = None
    for cpu in requests:
        req = ResourceSlots.parse({"cpu": cpu, "mem": "1g"})
        placement = select_agent(req, list(agents.values()), "default", strategy=strategy, last_agent_id=last)
        if placement.agent_id is None:
            assert all(not req.fits_in(a.free) for a in agents.values())
            continue
        chosen = agents[placement.agent_id]
        agents[chosen.agent_id] = AgentCapacity(chosen.agent_id, "default", "x86_64", chosen.available,
                                                chosen.occupied + req)
        last = chosen.agent_id
        assert all(a.occupied.fits_in(a.available) for a in agents.values())


def test_device_free_counts_reported_allocations_then_places_the_unreported_best_fit() -> None:
    from manager.control.scheduler import device_free_of

    half = ResourceSlots.parse({"cuda.shares": "0.5"})
    free = device_free_of(["GPU-0", "GPU-1"], [({"GPU-1": "0.50"}, half), (None, half), (None, half)])
    # GPU-1 reported half used; the first unreported half fills GPU-1 (best fit), the next half goes to GPU-0
    assert free == {"GPU-0": Decimal("0.5"), "GPU-1": Decimal(0)}
    assert device_free_of([], [(None, half)]) is None
