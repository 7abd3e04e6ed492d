"""GPU slot allocation on one agent: ``cuda.device`` (whole GPUs) and ``cuda.shares`` (fractions of GPUs).

PURE: no I/O, no clocks. The registry calls :meth:`GpuAllocator.allocate` when a kernel is created and
:meth:`GpuAllocator.release` when it is gone; :meth:`GpuAllocator.restore` puts back the allocations of
replicas re-adopted after an agent restart.

Model: every device has 100 quanta (quantum 0.01 of a GPU). A device is either free, partly shared, or
held whole. Rules:

* Never over-committed: the quanta in use on a device never exceed 100.
* ``cuda.device: N`` takes N devices that nobody uses at all (lowest index first).
* ``cuda.shares: S`` (a multiple of 0.01) is split into ``floor(S)`` whole free devices plus the remainder on
  ONE device, chosen best-fit (the device with the least free quanta that still fits, so partly used devices
  are filled before a free one is broken into). A request of at most 1.0 therefore always lives on a
  single device.
* Only when that is impossible and fragmentation is allowed (``[gpu] allow_fragmentation``, Backend.AI's
  ``allow_fractional_resource_fragmentation``) the request is spread over several devices, filling the
  fullest devices first (so the fragments that exist get used, and free devices stay whole).
* One request asks for ``cuda.device`` or ``cuda.shares``, not both.

A request that cannot be placed raises :class:`AllocationError` naming the slot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

UNITS = 100  # quanta per device
QUANTUM = Decimal("0.01")
MIB = 1024 * 1024


class AllocationError(Exception):
    """The request cannot be placed on this agent's devices; ``slot`` is the offending slot name."""

    def __init__(self, slot: str, reason: str):
        super().__init__(f"{slot}: {reason}")
        self.slot = slot
        self.reason = reason


@dataclass(frozen=True)
class Allocation:
    """Which devices a kernel holds: ``(uuid, quanta)`` in placement order; ``whole`` for cuda.device."""

    slot: str  # "cuda.device" | "cuda.shares"
    parts: tuple[tuple[str, int], ...]

    @property
    def uuids(self) -> list[str]:
        return [uuid for uuid, _ in self.parts]

    @property
    def fractional(self) -> bool:
        return any(q < UNITS for _, q in self.parts)

    def amount(self) -> Decimal:
        total = sum(q for _, q in self.parts)
        if self.slot == "cuda.device":
            return Decimal(total // UNITS)
        return (Decimal(total) / UNITS).quantize(QUANTUM)

    def to_json(self) -> dict[str, Any]:
        return {"slot": self.slot, "parts": [[uuid, q] for uuid, q in self.parts]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Allocation:
        parts = tuple((str(uuid), int(q)) for uuid, q in data["parts"])
        slot = str(data["slot"])
        if slot not in ("cuda.device", "cuda.shares") or any(not 0 < q <= UNITS for _, q in parts):
            raise ValueError(f"invalid allocation record {data!r}")
        return cls(slot=slot, parts=parts)

    def describe(self) -> dict[str, str]:
        """``{uuid: "0.25"}`` (fraction of each device), for reports."""
        return {uuid: format((Decimal(q) / UNITS).quantize(QUANTUM), "f") for uuid, q in self.parts}


def _quanta(shares: Decimal) -> int:
    scaled = shares * UNITS
    if scaled != scaled.to_integral_value():
        raise AllocationError("cuda.shares", f"must be a multiple of {QUANTUM}")
    return int(scaled)


def _fmt(quanta: int) -> str:
    return format((Decimal(quanta) / UNITS).quantize(QUANTUM), "f")


class GpuAllocator:
    """The devices of one agent and what each kernel holds on them (keys are kernel ids, any hashable)."""

    def __init__(self, devices: Sequence[str], allow_fragmentation: bool = False):
        if len(set(devices)) != len(devices):
            raise ValueError("duplicate device ids")
        self.devices: list[str] = list(devices)
        self.allow_fragmentation = allow_fragmentation
        self.used: dict[str, int] = {d: 0 for d in self.devices}
        self.whole: set[str] = set()  # devices held by a cuda.device allocation
        self.owners: dict[Any, Allocation] = {}

    # -- queries ---------------------------------------------------------------------------------------
    def free(self, device: str) -> int:
        return UNITS - self.used[device]

    def get(self, key: Any) -> Allocation | None:
        return self.owners.get(key)

    # -- placement -------------------------------------------------------------------------------------
    def plan(self, devices: Decimal | int = 0, shares: Decimal | int = 0,
             allow_fragmentation: bool | None = None) -> Allocation | None:
        """Where a request would go (None: no GPU asked); raises AllocationError. Changes nothing."""
        devices, shares = Decimal(devices), Decimal(shares)
        if devices < 0 or shares < 0:
            raise AllocationError("cuda.device" if devices < 0 else "cuda.shares", "must not be negative")
        if devices > 0 and shares > 0:
            raise AllocationError("cuda.shares", "request either cuda.device (whole GPUs) or cuda.shares "
                                                 "(fractions), not both")
        if devices > 0:
            if devices != devices.to_integral_value():
                raise AllocationError("cuda.device", "must be a whole number of devices")
            return self._plan_whole(int(devices))
        if shares > 0:
            frag = self.allow_fragmentation if allow_fragmentation is None else allow_fragmentation
            return self._plan_shares(_quanta(shares), frag)
        return None

    def _free_devices(self, exclude: AbstractSet[str] = frozenset()) -> list[str]:
        return [d for d in self.devices if self.used[d] == 0 and d not in exclude]

    def _plan_whole(self, n: int) -> Allocation:
        free = self._free_devices()
        if len(free) < n:
            raise AllocationError("cuda.device", f"{n} requested, but only {len(free)} of this agent's "
                                                 f"{len(self.devices)} GPUs are entirely free")
        return Allocation("cuda.device", tuple((d, UNITS) for d in free[:n]))

    def _plan_shares(self, quanta: int, allow_fragmentation: bool) -> Allocation:
        full, rem = divmod(quanta, UNITS)
        placed = self._plan_compact(full, rem)
        if placed is not None:
            return Allocation("cuda.shares", placed)
        total_free = sum(self.free(d) for d in self.devices)
        if allow_fragmentation and total_free >= quanta:
            # Fill the fullest devices first; ties by index (stable sort).
            order = sorted((d for d in self.devices if self.free(d) > 0), key=self.free)
            parts: list[tuple[str, int]] = []
            left = quanta
            for d in order:
                take = min(left, self.free(d))
                parts.append((d, take))
                left -= take
                if left == 0:
                    break
            return Allocation("cuda.shares", tuple(parts))
        largest = max((self.free(d) for d in self.devices), default=0)
        if total_free < quanta:
            why = f"only {_fmt(total_free)} free in total on {len(self.devices)} GPUs"
        elif full:
            why = (f"needs {full} entirely free GPU(s) plus {_fmt(rem)} on one more, and fragmentation across "
                   "devices is not allowed on this agent ([gpu] allow_fragmentation)")
        else:
            why = (f"no single GPU has {_fmt(quanta)} free (the largest free part is {_fmt(largest)}), and "
                   "fragmentation across devices is not allowed on this agent ([gpu] allow_fragmentation)")
        raise AllocationError("cuda.shares", f"{_fmt(quanta)} requested, but {why}")

    def _plan_compact(self, full: int, rem: int) -> tuple[tuple[str, int], ...] | None:
        """``full`` free devices + ``rem`` quanta best-fit on one other device, or None."""
        rem_device: str | None = None
        if rem:
            fits = [d for d in self.devices if self.free(d) >= rem]
            # Best fit: least free first; a partly used device before a free one; then the lowest index.
            fits.sort(key=lambda d: (self.free(d), self.devices.index(d)))
            # Prefer a partly used device only if enough free devices remain for the whole part.
            for d in fits:
                if len(self._free_devices({d})) >= full:
                    rem_device = d
                    break
            if rem_device is None:
                return None
        free = self._free_devices({rem_device} if rem_device else set())
        if len(free) < full:
            return None
        parts = [(d, UNITS) for d in free[:full]]
        if rem_device is not None:
            parts.append((rem_device, rem))
        return tuple(parts)

    # -- state changes ---------------------------------------------------------------------------------
    def allocate(self, key: Any, devices: Decimal | int = 0, shares: Decimal | int = 0,
                 allow_fragmentation: bool | None = None) -> Allocation | None:
        """Place and record a request (idempotent per key: an existing allocation is returned)."""
        if key in self.owners:
            return self.owners[key]
        allocation = self.plan(devices, shares, allow_fragmentation)
        if allocation is not None:
            self._apply(key, allocation)
        return allocation

    def restore(self, key: Any, allocation: Allocation) -> None:
        """Record an allocation made before an agent restart; raises AllocationError if it no longer fits
        (an unknown device, or devices already held)."""
        for uuid, q in allocation.parts:
            if uuid not in self.used:
                raise AllocationError(allocation.slot, f"device {uuid} is not present on this agent any more")
            if self.used[uuid] + q > UNITS or uuid in self.whole or (allocation.slot == "cuda.device"
                                                                     and self.used[uuid]):
                raise AllocationError(allocation.slot, f"device {uuid} is already taken")
        if key in self.owners:
            raise AllocationError(allocation.slot, f"{key} already holds an allocation")
        self._apply(key, allocation)

    def _apply(self, key: Any, allocation: Allocation) -> None:
        for uuid, q in allocation.parts:
            self.used[uuid] += q
            if allocation.slot == "cuda.device":
                self.whole.add(uuid)
        self.owners[key] = allocation

    def release(self, key: Any) -> Allocation | None:
        allocation = self.owners.pop(key, None)
        if allocation is not None:
            for uuid, q in allocation.parts:
                self.used[uuid] -= q
                if allocation.slot == "cuda.device":
                    self.whole.discard(uuid)
        return allocation


def gpu_environ(allocation: Allocation | None, memory: Mapping[str, int], have_gpus: bool) -> dict[str, str]:
    """The replica's view of its GPUs.

    ``CUDA_VISIBLE_DEVICES`` lists the allocated devices by UUID (valid both on the host and inside a
    container that received them through DeviceRequests). For a fraction, MPS limits are added:
    ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` (the largest per-device fraction: MPS applies one percentage to a
    client on all its devices) and ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`` (per device, by ordinal within
    CUDA_VISIBLE_DEVICES, in MiB). A kernel without GPUs on a GPU host gets no device at all.
    """
    if allocation is None:
        return {"CUDA_VISIBLE_DEVICES": "", "NVIDIA_VISIBLE_DEVICES": "void"} if have_gpus else {}
    env = {"CUDA_VISIBLE_DEVICES": ",".join(allocation.uuids), "NVIDIA_VISIBLE_DEVICES": ",".join(allocation.uuids)}
    if allocation.fractional:
        env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(max(q for _, q in allocation.parts))
        env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] = ",".join(
            f"{i}={memory.get(uuid, 0) * q // UNITS // MIB}M" for i, (uuid, q) in enumerate(allocation.parts))
    return env
