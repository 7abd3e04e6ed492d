"""GPU slots: the pure allocator (property tests), the replica's GPU environment, NVML/fake discovery, and
fake-GPU kernels through the agent's RPC API (placement, 409 naming the slot, release, re-adoption)."""

from __future__ import annotations

import logging
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.alloc import UNITS, Allocation, AllocationError, GpuAllocator, gpu_environ
from agent.config import GpuSection
from agent.gpu import discover_gpus
from agent.resources import available_slots
from common.signing import RPCError
from tests.agent.conftest import make_config, running_agent

# ---------------------------------------------------------------------------------------------------------
# Property tests of the allocator
# ---------------------------------------------------------------------------------------------------------

shares_st = st.integers(min_value=1, max_value=350).map(lambda q: Decimal(q) / 100)
op_st = st.one_of(
    st.tuples(st.just("shares"), shares_st),
    st.tuples(st.just("device"), st.integers(min_value=1, max_value=3)),
    st.tuples(st.just("free"), st.integers(min_value=0, max_value=50)),
)


def _check_invariants(alloc: GpuAllocator) -> None:
    used = {d: 0 for d in alloc.devices}
    for a in alloc.owners.values():
        devices = [u for u, _ in a.parts]
        assert len(devices) == len(set(devices)), "a device appears twice in one allocation"
        for uuid, q in a.parts:
            assert 0 < q <= UNITS
            used[uuid] += q
    assert used == alloc.used, "the books do not match the allocations"
    for d, q in used.items():
        assert 0 <= q <= UNITS, f"{d} over-committed: {q}"
    for a in alloc.owners.values():
        if a.slot == "cuda.device":
            for uuid, _ in a.parts:
                holders = [o for o in alloc.owners.values() if uuid in o.uuids]
                assert len(holders) == 1, "a whole device is shared"


@settings(max_examples=300, deadline=None)
@given(n_devices=st.integers(min_value=0, max_value=5), ops=st.lists(op_st, max_size=40),
       fragmentation=st.booleans())
def test_allocator_never_overcommits_and_frees_exactly(n_devices: int, ops: list[tuple[str, Any]],
                                                        fragmentation: bool) -> None:
    alloc = GpuAllocator([f"GPU-{i}" for i in range(n_devices)], allow_fragmentation=fragmentation)
    snapshots: dict[int, dict[str, int]] = {}
    key = 0
    for kind, value in ops:
        if kind == "free":
            if alloc.owners:
                victim = sorted(alloc.owners)[value % len(alloc.owners)]
                released = alloc.release(victim)
                assert released is not None
                assert alloc.release(victim) is None  # freeing twice changes nothing
            _check_invariants(alloc)
            continue
        key += 1
        before = dict(alloc.used)
        free_total = sum(UNITS - q for q in before.values())
        free_whole = sum(1 for q in before.values() if q == 0)
        try:
            a = alloc.allocate(key, devices=value if kind == "device" else 0,
                               shares=value if kind == "shares" else 0)
        except AllocationError as exc:
            assert alloc.used == before, "a failed request changed the books"
            assert exc.slot == ("cuda.device" if kind == "device" else "cuda.shares")
            if kind == "device":
                assert free_whole < value
            else:
                quanta = int(value * UNITS)
                if fragmentation:
                    assert free_total < quanta
                elif quanta <= UNITS:
                    assert all(UNITS - q < quanta for q in before.values()), "a fitting device was missed"
            continue
        assert a is not None
        snapshots[key] = before
        total = sum(q for _, q in a.parts)
        if kind == "device":
            assert a.slot == "cuda.device" and len(a.parts) == value and all(q == UNITS for _, q in a.parts)
            assert all(before[u] == 0 for u in a.uuids), "a whole device was taken from a shared one"
        else:
            assert total == int(value * UNITS)
            minimal = -(-total // UNITS)
            if not fragmentation:
                assert len(a.parts) == minimal, "without fragmentation a request spans the fewest devices"
                if total <= UNITS:
                    assert len(a.parts) == 1, "a share of at most one GPU must stay on one device"
        _check_invariants(alloc)
    # Freeing everything returns to an empty state exactly.
    for k in list(alloc.owners):
        alloc.release(k)
    assert all(q == 0 for q in alloc.used.values()) and not alloc.whole and not alloc.owners


@settings(max_examples=200, deadline=None)
@given(requests=st.lists(shares_st, min_size=1, max_size=12))
def test_allocator_release_restores_the_exact_previous_state(requests: list[Decimal]) -> None:
    alloc = GpuAllocator(["a", "b", "c"])
    for i, shares in enumerate(requests):
        before = dict(alloc.used)
        try:
            alloc.allocate(i, shares=shares)
        except AllocationError:
            continue
        after = dict(alloc.used)
        alloc.release(i)
        assert alloc.used == before
        alloc.restore(i, Allocation.from_json(_roundtrip(alloc, i, shares, before)))
        assert alloc.used == after


def _roundtrip(alloc: GpuAllocator, key: int, shares: Decimal, before: dict[str, int]) -> dict[str, Any]:
    probe = GpuAllocator(alloc.devices)
    probe.used = dict(before)
    planned = probe.plan(shares=shares)
    assert planned is not None
    return planned.to_json()


def test_allocator_best_fit_keeps_free_devices_whole() -> None:
    alloc = GpuAllocator(["g0", "g1", "g2"])
    assert alloc.allocate("a", shares=Decimal("0.5")).parts == (("g0", 50),)
    assert alloc.allocate("b", shares=Decimal("0.3")).parts == (("g0", 30),)  # fills g0 first
    assert alloc.allocate("c", shares=Decimal("0.3")).parts == (("g1", 30),)  # g0 has only 0.2 left
    assert alloc.allocate("d", shares=Decimal("0.2")).parts == (("g0", 20),)  # best fit: exactly g0's rest
    assert alloc.allocate("e", devices=1).parts == (("g2", 100),)
    with pytest.raises(AllocationError) as info:
        alloc.allocate("f", devices=1)
    assert info.value.slot == "cuda.device" and "entirely free" in info.value.reason
    with pytest.raises(AllocationError) as info:
        alloc.allocate("g", shares=Decimal("0.8"))
    assert info.value.slot == "cuda.shares" and "0.70" in info.value.reason


def test_allocator_fragmentation_only_when_allowed() -> None:
    alloc = GpuAllocator(["g0", "g1"], allow_fragmentation=False)
    alloc.allocate("a", shares=Decimal("0.6"))
    alloc.allocate("b", shares=Decimal("0.6"))
    with pytest.raises(AllocationError, match="fragmentation"):
        alloc.allocate("c", shares=Decimal("0.5"))
    split = alloc.allocate("c", shares=Decimal("0.5"), allow_fragmentation=True)
    assert split is not None and sorted(q for _, q in split.parts) == [10, 40]
    assert sorted(alloc.used.values()) == [70, 100]
    with pytest.raises(AllocationError, match="both"):
        GpuAllocator(["x"]).plan(devices=1, shares=Decimal("0.5"))


def test_allocator_multi_gpu_shares_take_whole_devices_plus_one_part() -> None:
    alloc = GpuAllocator(["g0", "g1", "g2"])
    alloc.allocate("small", shares=Decimal("0.4"))
    big = alloc.allocate("big", shares=Decimal("1.5"))
    assert big is not None and big.parts == (("g1", 100), ("g0", 50))
    assert big.amount() == Decimal("1.50")


def test_gpu_environ_for_whole_fraction_and_none() -> None:
    memory = {"g0": 16 * 2**30, "g1": 8 * 2**30}
    whole = Allocation("cuda.device", (("g0", 100), ("g1", 100)))
    assert gpu_environ(whole, memory, True) == {"CUDA_VISIBLE_DEVICES": "g0,g1", "NVIDIA_VISIBLE_DEVICES": "g0,g1"}
    part = Allocation("cuda.shares", (("g1", 25),))
    env = gpu_environ(part, memory, True)
    assert env["CUDA_VISIBLE_DEVICES"] == "g1"
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "25"
    assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=2048M"
    assert gpu_environ(None, memory, True) == {"CUDA_VISIBLE_DEVICES": "", "NVIDIA_VISIBLE_DEVICES": "void"}
    assert gpu_environ(None, {}, False) == {}


# ---------------------------------------------------------------------------------------------------------
# Discovery
# ---------------------------------------------------------------------------------------------------------

class _FakeNvml:
    def __init__(self, count: int):
        self.count = count
        self.shutdown = False

    def nvmlInit(self) -> None:
        if self.count < 0:
            raise OSError("NVML Shared Library Not Found")

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(total=(handle + 1) * 2**30)

    def nvmlDeviceGetUUID(self, handle: int) -> bytes:
        return f"GPU-{handle:04d}".encode()

    def nvmlDeviceGetName(self, handle: int) -> str:
        return "NVIDIA Test"

    def nvmlShutdown(self) -> None:
        self.shutdown = True


def test_no_nvml_means_no_gpu_slots_and_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    """The real NVML path on this host (no NVIDIA driver): no GPU slots, one clear line."""
    caplog.set_level(logging.INFO, logger="agent.gpu")
    assert discover_gpus(GpuSection()) == []
    lines = [r.getMessage() for r in caplog.records if r.name == "agent.gpu"]
    assert len(lines) == 1 and lines[0].startswith("no GPU slots: NVML is not usable"), lines
    slots = available_slots(make_config(Path("/tmp/unused")).resources, [])
    assert "cuda.device" not in slots and "cuda.shares" not in slots


def test_nvml_enumeration_through_the_library_interface() -> None:
    """NVML itself cannot run here (no GPU): a stand-in with pynvml's function names."""
    nvml = _FakeNvml(2)
    gpus = discover_gpus(GpuSection(exclude=["GPU-0001"]), nvml=nvml)
    assert [(g.uuid, g.memory, g.name) for g in gpus] == [("GPU-0000", 2**30, "NVIDIA Test")]
    assert nvml.shutdown


def test_fake_gpu_devices_from_config_become_slots() -> None:
    section = GpuSection(fake_devices=[{"uuid": "GPU-f0", "memory": "8g"}, {"uuid": "GPU-f1", "name": "B"}])
    gpus = discover_gpus(section)
    assert [g.uuid for g in gpus] == ["GPU-f0", "GPU-f1"] and gpus[0].memory == 8 * 2**30 and gpus[0].fake
    slots = available_slots(make_config(Path("/tmp/unused")).resources, gpus)
    assert slots["cuda.device"] == "2" and slots["cuda.shares"] == "2"


# ---------------------------------------------------------------------------------------------------------
# Through the agent (fake GPUs)
# ---------------------------------------------------------------------------------------------------------

FAKE_GPUS = {"gpu": {"fake_devices": [{"uuid": "GPU-fake-0", "memory": "16g"},
                                      {"uuid": "GPU-fake-1", "memory": "16g"}]}}


async def test_fake_gpu_kernels_get_devices_env_and_a_clear_409(tmp_path: Path) -> None:
    config = make_config(tmp_path, FAKE_GPUS)
    async with running_agent(config, destroy=False) as agent:
        health = await agent.rpc("GET", "/rpc/health")
        assert health["available_slots"]["cuda.shares"] == "2" and len(health["gpus"]) == 2

        a = agent.spec(resource_slots={"cpu": "0.1", "mem": "64m", "cuda.shares": "0.6"})
        report = await agent.create(a)
        assert report["allocation"] == {"GPU-fake-0": "0.60"}
        k = await agent.wait_healthy(a["kernel_id"])
        assert k["status"] == "running" and k["allocation"] == {"GPU-fake-0": "0.60"}
        _, env = await agent.replica_get(k["port"], "/environ")
        assert env["CUDA_VISIBLE_DEVICES"] == "GPU-fake-0"
        assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "60"
        assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == f"0={16 * 1024 * 60 // 100}M"

        b = agent.spec(resource_slots={"cuda.device": "1"})
        assert (await agent.create(b))["allocation"] == {"GPU-fake-1": "1.00"}
        plain = agent.spec()
        await agent.create(plain)
        pk = await agent.wait_healthy(plain["kernel_id"])
        _, env = await agent.replica_get(pk["port"], "/environ")
        assert env["CUDA_VISIBLE_DEVICES"] == "" and "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE" not in env

        for slots, slot in (({"cuda.shares": "0.5"}, "cuda.shares"), ({"cuda.device": "1"}, "cuda.device")):
            with pytest.raises(RPCError) as info:
                await agent.create(agent.spec(resource_slots=slots))
            assert info.value.status == 409 and slot in str(info.value), str(info.value)
        with pytest.raises(RPCError) as info:
            await agent.create(agent.spec(resource_slots={"cuda.shares": "0.123"}))
        assert info.value.status == 400 and "cuda.shares" in str(info.value)

        # Destroying frees exactly its part; the 0.5 request now fits.
        await agent.rpc("DELETE", f"/rpc/kernels/{a['kernel_id']}")
        assert (await agent.rpc("GET", "/rpc/health"))["gpus"][0]["used"] == "0.00"
        c = agent.spec(resource_slots={"cuda.shares": "0.5"})
        assert (await agent.create(c))["allocation"] == {"GPU-fake-0": "0.50"}

    # Re-adoption restores the placement: the same request does not fit again after a restart.
    async with running_agent(config) as again:
        assert (await again.get_kernel(c["kernel_id"]))["allocation"] == {"GPU-fake-0": "0.50"}
        usage = {g["uuid"]: g["used"] for g in (await again.rpc("GET", "/rpc/health"))["gpus"]}
        assert usage == {"GPU-fake-0": "0.50", "GPU-fake-1": "1.00"}
        with pytest.raises(RPCError) as info:
            await again.create(again.spec(resource_slots={"cuda.shares": "0.6"}))
        assert info.value.status == 409


async def test_cuda_request_on_an_agent_without_gpus_is_a_409_naming_the_slot(tmp_path: Path) -> None:
    async with running_agent(make_config(tmp_path)) as agent:
        with pytest.raises(RPCError) as info:
            await agent.create(agent.spec(resource_slots={"cuda.shares": "0.5"}))
        assert info.value.status == 409 and "cuda.shares" in str(info.value) and "no GPUs" in str(info.value)
